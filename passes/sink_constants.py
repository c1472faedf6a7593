"""Pass: constant adds sink below variable adds and multiplies, and merge.

BHViT's float remainder adds constants everywhere: every RPReLU ends in ``+ move2``, every
LayerScale in ``+ move``, and the GC block sums three RPReLUs before a BatchNorm::

    ((p1 + m1) + (p2 + m2)) + (p3 + m3)  ──Sub(mean)──Mul(a)──Add(b)
      becomes
    ((p1 + p2) + p3)  ──Mul(a)──Add((m1 + m2 + m3 - mean) * a + b)

Rules, applied until none matches (each intermediate tensor single-use; ``c`` are constants,
``x``, ``y`` variables; ``Sub(x, c)`` is ``Add(x, -c)``):

* ``(x + c1) + c2 -> x + (c1 + c2)``, ``(x * c1) * c2 -> x * (c1 c2)``;
* ``(x + c1) * c2 -> x * c2 + c1 c2``;
* ``(x + c1) + y -> (x + y) + c1`` (either operand).

A constant only moves down a chain of elementwise ops, so the rewriting ends. Exact in real
arithmetic, in float it reassociates (the last bits move, as in ``fold_epilogue``). Constants of
any broadcastable shape: each rule holds pointwise. The fused graph's elementwise functions
(the GC block's epilogue: 4 of its ~16 float operations per element) get shorter.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import only_consumer, split_const_operand


def _affine(node: gs.Node) -> tuple[str, gs.Tensor, np.ndarray] | None:
    """``("add" | "mul", x, c)`` for ``Add(x, c)``, ``Sub(x, c)`` (c negated) or ``Mul(x, c)`` in float32."""
    if node.op not in ("Add", "Sub", "Mul"):
        return None
    split = split_const_operand(node)
    if split is None or split[1].dtype != np.float32:
        return None
    x, c = split
    if node.op == "Sub":
        return ("add", x, -c) if node.inputs[0] is x else None
    return ("add" if node.op == "Add" else "mul", x, c)


def _const(c: np.ndarray, ids: Iterator[int]) -> gs.Constant:
    """A new constant; names from the pass's own counter, so a fused file's bytes do not depend on
    how often the pass ran before in this process."""
    return gs.Constant(f"sink_constants/c{next(ids)}", np.ascontiguousarray(c.astype(np.float32)))


def _single_producer(t: gs.Tensor, outputs: set) -> gs.Node | None:
    """The node writing ``t`` when ``t`` has exactly one reader and is not a graph output."""
    if id(t) in outputs or only_consumer(t) is None or len(t.inputs) != 1:
        return None
    return t.inputs[0]


def _rewrite(node: gs.Node, outputs: set, ids: Iterator[int]) -> bool:
    """Apply the first rule that matches at ``node`` (the consumer); True if the graph changed."""
    me = _affine(node)
    if me is not None:
        kind, u, c2 = me
        prod = _single_producer(u, outputs)
        inner = _affine(prod) if prod is not None else None
        if inner is None:
            return False
        pkind, x, c1 = inner
        if pkind == kind:  # merge: (x + c1) + c2, (x * c1) * c2
            merged = c1 + c2 if kind == "add" else c1 * c2
            node.op, node.inputs = ("Add" if kind == "add" else "Mul"), [x, _const(merged, ids)]
            prod.outputs.clear()
            return True
        if pkind == "add" and kind == "mul":  # (x + c1) * c2 -> (x * c2) + c1 c2
            node.op, node.inputs = "Add", [u, _const(c1 * c2, ids)]
            prod.op, prod.inputs = "Mul", [x, _const(c2, ids)]
            return True
        return False
    if node.op != "Add" or len(node.inputs) != 2 or split_const_operand(node) is not None:
        return False
    for i, u in enumerate(node.inputs):  # (x + c1) + y -> (x + y) + c1
        if node.inputs[1 - i] is u:
            return False
        prod = _single_producer(u, outputs)
        inner = _affine(prod) if prod is not None else None
        if inner is None or inner[0] != "add":
            continue
        _, x, c1 = inner
        out = node.outputs[0]
        mid = gs.Variable(f"{out.name}/sink{next(ids)}", dtype=out.dtype)
        node.inputs[i] = x
        node.outputs = [mid]
        prod.inputs, prod.outputs = [mid, _const(c1, ids)], [out]
        prod.op = "Add"
        return True
    return False


def sink_constants(graph: gs.Graph) -> int:
    """Rewrite until no rule matches; return how many rewrites were made."""
    count = 0
    outputs = set(id(t) for t in graph.outputs)
    ids = itertools.count()
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.outputs and _rewrite(node, outputs, ids):
                count += 1
                changed = True
        graph.cleanup().toposort()
    return count
