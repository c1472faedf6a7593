"""Pass: per-channel constants after a residual add (or the token layout) fold into the binary op.

    BinaryLinear(bias=b) ──Add(r)──Sub(m)──> y        becomes   BinaryLinear(bias=b-m) ──Add(r)──> y
    BinaryConv2d(bias=b) ──Reshape([B,C,HW])──Transpose([0,2,1])──Sub(m)──> y
                                                     becomes   BinaryConv2d(bias=b-m) ──Reshape──Transpose──> y

BHViT's RPReLU is ``prelu(x - move1) + move2``, and most of its inputs are a binary layer plus a
residual (the q/k/v projections, the attention and MLP outputs), or a GC conv turned into tokens;
``fold_epilogue`` stops at the residual ``Add`` and at the layout ops, so ``- move1`` stayed a
float pass over the activations. A constant add or subtract commutes with the residual add, and any
per-channel constant passes the token layout (the channel axis becomes the last one), so they fold
into the layer's bias (and a multiply into its scale, where no residual was added before it).
Exact in real arithmetic; in float it moves the last bit, like ``fold_epilogue``. Runs after
``mlp_expand``, whose pattern needs the expansion's ``Sub(b1)`` in place.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import bhvit_inputs, const_value, last_axis_vector, only_consumer, split_const_operand
from .op_schema import DOMAIN

FOLDABLE_OPS = ("BinaryLinear", "PackedBinaryLinear", "BinaryConv2d")


def _token_layout(t: gs.Tensor, n: int) -> gs.Tensor | None:
    """The output of ``Transpose(Reshape(t, [B, C, -1]), [0, 2, 1])`` (NCHW -> tokens), if that follows ``t``."""
    reshape = only_consumer(t, "Reshape")
    shape = const_value(reshape.inputs[1]) if reshape is not None and len(reshape.inputs) > 1 else None
    if shape is None or shape.size != 3 or int(shape[1]) != n:
        return None
    transpose = only_consumer(reshape.outputs[0], "Transpose")
    if transpose is None or [int(p) for p in transpose.attrs.get("perm", [])] != [0, 2, 1]:
        return None
    return transpose.outputs[0]


def fold_residual(graph: gs.Graph) -> int:
    """Fold every constant the docstring's patterns allow; return how many ops were absorbed."""
    count = 0
    outputs = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op not in FOLDABLE_OPS or node.domain != DOMAIN or not node.outputs:
            continue
        args = bhvit_inputs(node)
        scale_t, bias_t = args["scale"], args["bias"]
        if not isinstance(scale_t, gs.Constant) or not isinstance(bias_t, gs.Constant):
            continue
        scale = np.asarray(scale_t.values, np.float32).copy()
        bias = np.asarray(bias_t.values, np.float32).copy()
        n = scale.size
        t = node.outputs[0]
        if node.op == "BinaryConv2d":
            t = _token_layout(t, n)
            if t is None:
                continue
        residual, folded = False, 0
        while id(t) not in outputs:
            nxt = only_consumer(t)
            if nxt is None or nxt.op not in ("Add", "Sub", "Mul") or t not in nxt.inputs:
                break
            split = split_const_operand(nxt)
            if split is None:  # both operands variable: a residual add (once, before any constant)
                if nxt.op != "Add" or residual or folded or all(i is t for i in nxt.inputs):
                    break
                residual, t = True, nxt.outputs[0]
                continue
            c = last_axis_vector(split[1], n)
            if c is None or split[0] is not t or (nxt.op == "Sub" and nxt.inputs[0] is not t):
                break
            if nxt.op == "Mul":
                if residual:
                    break
                scale, bias = scale * c, bias * c
            else:
                bias = bias + c if nxt.op == "Add" else bias - c
            # nxt's output is now written by t's producer (the layer, a layout op or the residual add)
            producer = t.inputs[0]
            producer.outputs = list(nxt.outputs)
            nxt.outputs.clear()
            t = producer.outputs[0]
            folded += 1
        if folded:
            scale_t.values, bias_t.values = scale, bias
            count += folded
    return count
