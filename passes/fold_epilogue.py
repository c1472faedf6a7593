"""Pass: fold per-channel ``Mul``/``Add``/``Sub`` constants after a binary op into its scale and bias.

    BinaryLinear(scale=s, bias=b) ──Sub(m)──Mul(a)──Add(c)──> y      (an eval-mode BatchNorm)
      becomes
    BinaryLinear(scale=s*a, bias=(b-m)*a+c) ──> y

Exact in real arithmetic; in float it moves the last bit, which the end-to-end tolerance covers.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import bhvit_inputs, only_consumer, split_const_operand
from .op_schema import DOMAIN

FOLDABLE_OPS = ("BinaryLinear", "BinaryConv2d")


def _per_channel(c: np.ndarray, op: str, n: int) -> np.ndarray | None:
    """``c`` as an [n] vector if it broadcasts along the op's channel axis only."""
    if c.size == 1:
        return np.full(n, float(c.reshape(())), dtype=np.float32)
    if c.size != n:
        return None
    shape = [s for s in c.shape]
    if op == "BinaryLinear" and shape[-1] == n:
        return c.reshape(n).astype(np.float32)
    if op == "BinaryConv2d" and (shape[-3:] == [n, 1, 1] or shape == [n, 1, 1]):
        return c.reshape(n).astype(np.float32)
    return None


def fold_epilogue(graph: gs.Graph) -> int:
    """Fold every foldable consumer chain; return how many elementwise ops were absorbed."""
    count = 0
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op not in FOLDABLE_OPS or node.domain != DOMAIN:
            continue
        args = bhvit_inputs(node)
        scale_t, bias_t = args["scale"], args["bias"]
        scale = np.asarray(scale_t.values, dtype=np.float32).copy()
        bias = np.asarray(bias_t.values, dtype=np.float32).copy()
        while id(node.outputs[0]) not in outputs:
            nxt = only_consumer(node.outputs[0])
            if nxt is None or nxt.op not in ("Mul", "Add", "Sub"):
                break
            split = split_const_operand(nxt)
            if split is None:
                break
            c = _per_channel(split[1], node.op, scale.size)
            if c is None or (nxt.op == "Sub" and nxt.inputs[0] is not node.outputs[0]):
                break
            if nxt.op == "Mul":
                scale, bias = scale * c, bias * c
            elif nxt.op == "Add":
                bias = bias + c
            else:
                bias = bias - c
            node.outputs = list(nxt.outputs)
            nxt.outputs.clear()
            count += 1
        scale_t.values, bias_t.values = scale, bias
    return count

