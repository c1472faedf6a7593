"""Pass: the MLP's expanding layer writes packed bits and its pooled residual (Larq-style bitpacked output).

BHViT's MLP (``docs/packing.md``, spec "Convolutional block") is ``C -> I = ratio * C -> C``::

    x ──BinaryLinear(C->I)──Add(Concat([x] * ratio))──Sub(b1)──PRelu(a)──Add(b2)──> h [.., I]
    h ──BinaryLinear(I->C, shift s)──> ...            (sign(h + s), the only use of h's values...)
    h ──Reshape([.., C, ratio])──ReduceMean(-1)──> p   (...besides the pooled residual of the output)

      becomes

    x ──BinaryExpandPack(ratio; b1, a, b2, s)──> (bits [.., I/64] uint64, p [.., C])
    bits ──PackedBinaryLinear(I->C)──> ...

The float ``h`` (I = 512..2048 floats per token, 6.4 MB at BHViT-Tiny's first stage) is never
written: the producing GEMM keeps it in registers, writes its sign bits (32x smaller) for the next
binary layer and its ``ratio``-channel means for the residual. Exact: every value is computed by
the same float ops in the same order; only where ``h`` lives changes. Needs ``I`` a multiple of 64
(whole packed words; every BHViT size is).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import (
    bhvit_inputs, bhvit_node, const_value, last_axis_vector, only_consumer, producer, split_const_operand,
)
from .op_schema import DOMAIN
from .ops import WORD


def _repeat_of(t: gs.Tensor, x: gs.Tensor) -> int | None:
    """``ratio`` if ``t = Concat([x] * ratio, axis=-1)``."""
    cat = producer(t, "Concat")
    if cat is None or not cat.inputs or any(i is not x for i in cat.inputs):
        return None
    rank = len(x.shape) if x.shape is not None else None
    axis = int(cat.attrs.get("axis", 0))
    if axis != -1 and (rank is None or axis != rank - 1):
        return None
    return len(cat.inputs)


def _const_operand(node: gs.Node | None, op: str, var: gs.Tensor) -> np.ndarray | None:
    """The constant operand of ``node`` (an ``op`` whose variable operand is ``var``)."""
    if node is None or node.op != op:
        return None
    split = split_const_operand(node)
    if split is None or split[0] is not var or (op == "Sub" and node.inputs[0] is not var):
        return None
    return split[1]


def _pooling(node: gs.Node, h: gs.Tensor, c: int, ratio: int) -> gs.Node | None:
    """The ``ReduceMean`` of ``Reshape(h, [.., C, ratio])`` over the last axis, keepdims 0."""
    if node.op != "Reshape" or node.inputs[0] is not h:
        return None
    shape = const_value(node.inputs[1])
    if shape is None or shape.size < 2 or [int(v) for v in shape[-2:]] != [c, ratio]:
        return None
    mean = only_consumer(node.outputs[0], "ReduceMean")
    if mean is None or int(mean.attrs.get("keepdims", 1)) != 0:
        return None
    axes = const_value(mean.inputs[1]) if len(mean.inputs) > 1 else np.asarray(mean.attrs.get("axes", []))
    rank = len(shape)
    if axes is None or [int(a) % rank for a in np.atleast_1d(axes)] != [rank - 1]:
        return None
    return mean


def fuse_mlp_expand(graph: gs.Graph) -> int:
    """Rewrite every MLP expansion that matches the docstring's pattern; return how many."""
    count = 0
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op != "BinaryLinear" or node.domain != DOMAIN or not node.outputs:
            continue  # (no outputs: an output layer already rewritten into a PackedBinaryLinear)
        args = bhvit_inputs(node)
        x, d = args["x"], node.outputs[0]
        n = int(np.asarray(args["scale"].values).size)
        c = int(node.attrs["in_features"])
        if n % WORD or id(d) in outputs:
            continue
        add = only_consumer(d, "Add")
        if add is None or d not in add.inputs:
            continue
        other = add.inputs[1] if add.inputs[0] is d else add.inputs[0]
        ratio = _repeat_of(other, x)
        if ratio is None or ratio * c != n:
            continue
        sub = only_consumer(add.outputs[0])
        b1 = last_axis_vector(_const_operand(sub, "Sub", add.outputs[0]), n)
        prelu = only_consumer(sub.outputs[0], "PRelu") if b1 is not None else None
        slope = last_axis_vector(const_value(prelu.inputs[1]), n) if prelu is not None else None
        add2 = only_consumer(prelu.outputs[0]) if slope is not None else None
        b2 = last_axis_vector(_const_operand(add2, "Add", prelu.outputs[0]), n) if add2 is not None else None
        if b2 is None:
            continue
        h = add2.outputs[0]
        if id(h) in outputs or len(h.outputs) != 2:
            continue
        readers = list(h.outputs)
        linear = next((r for r in readers if r.op == "BinaryLinear" and r.domain == DOMAIN and bhvit_inputs(r)["x"] is h), None)
        reshape = next((r for r in readers if r is not linear), None)
        mean = _pooling(reshape, h, c, ratio) if linear is not None and reshape is not None else None
        if mean is None or int(linear.attrs["in_features"]) != n:
            continue
        name = node.name or d.name
        bits = gs.Variable(f"{name}/bits", dtype=np.uint64)
        pooled = mean.outputs[0]
        out_args = bhvit_inputs(linear)
        expand_args = {
            **args,
            "rp_shift": gs.Constant(f"{name}/rp_shift", b1),
            "rp_slope": gs.Constant(f"{name}/rp_slope", slope),
            "rp_bias": gs.Constant(f"{name}/rp_bias", b2),
            "next_shift": out_args["shift"],
        }
        fused = bhvit_node("BinaryExpandPack", f"{name}/BinaryExpandPack", expand_args, [bits, pooled],
                           in_features=c, ratio=ratio)
        packed_args = {"x_bits": bits, **{k: out_args[k] for k in ("w_bits", "scale", "bias")}}
        packed = bhvit_node("PackedBinaryLinear", f"{linear.name}/Packed", packed_args, list(linear.outputs),
                            in_features=n)
        for old in (node, linear, mean):
            old.outputs.clear()
        graph.nodes.extend([fused, packed])
        count += 1
    return count
