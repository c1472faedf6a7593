"""Pass: ``Conv(Sign(x + shift), W)`` with ``W`` of +-s per output channel -> ``bhvit.BinaryConv2d``.

    x ──Add(shift[1,C,1,1])──Sign──Conv(W[O,C/g,kh,kw] = +-s_o, b)──> y
      becomes
    x ──BinaryConv2d(shift, w_bits[O, K/64], scale=s, bias=b)──> y

The Conv's zero padding is applied *after* the sign (the official semantics); the fused op keeps
it that way, which a packed kernel must reproduce with a border correction.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import bhvit_node, binary_weight_rows, const_value, packed_weight_inputs, sign_source


def fuse_binary_conv(graph: gs.Graph) -> int:
    """Rewrite every binary 2-D convolution; return how many were rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Conv" or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            continue
        w = const_value(node.inputs[1])
        if w is None or w.ndim != 4:
            continue
        group = int(node.attrs.get("group", 1))
        o, cg, kh, kw = w.shape
        src = sign_source(node.inputs[0], (1, cg * group, 1, 1))
        if src is None:
            continue
        rows = binary_weight_rows(w)
        if rows is None:
            continue
        scale, signs = rows
        bias = np.zeros(o, dtype=np.float32)
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            b = const_value(node.inputs[2])
            if b is None:
                continue
            bias = b.astype(np.float32)
        x, shift = src
        name = node.name or node.outputs[0].name
        fused = bhvit_node(
            "BinaryConv2d", f"{name}/BinaryConv2d", packed_weight_inputs(name, x, shift, signs, scale, bias),
            list(node.outputs),
            kernel_shape=[kh, kw],
            strides=node.attrs.get("strides", [1, 1]),
            pads=node.attrs.get("pads", [0, 0, 0, 0]),
            dilations=node.attrs.get("dilations", [1, 1]),
            group=group,
            in_features=cg * kh * kw,
        )
        node.outputs.clear()
        graph.nodes.append(fused)
        count += 1
    return count
