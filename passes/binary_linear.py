"""Pass: ``MatMul(Sign(x + shift), W)`` with ``W`` of +-s columns -> ``bhvit.BinaryLinear``.

    x ──Add(shift)──Sign──MatMul(W[K,N] = +-s_n)──> y
      becomes
    x ──BinaryLinear(shift, w_bits[N, K/64], scale=s, bias=0)──> y
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import bhvit_node, binary_weight_rows, const_value, packed_weight_inputs, sign_source


def fuse_binary_linear(graph: gs.Graph) -> int:
    """Rewrite every binary linear layer; return how many were rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "MatMul":
            continue
        w = const_value(node.inputs[1])
        if w is None or w.ndim != 2:
            continue
        k, n = w.shape
        src = sign_source(node.inputs[0], (k,))
        if src is None:
            continue
        rows = binary_weight_rows(w.T)
        if rows is None:
            continue
        scale, signs = rows
        x, shift = src
        name = node.name or node.outputs[0].name
        inputs = packed_weight_inputs(name, x, shift, signs, scale, np.zeros(n, dtype=np.float32))
        fused = bhvit_node("BinaryLinear", f"{name}/BinaryLinear", inputs, list(node.outputs), in_features=k)
        node.outputs.clear()
        graph.nodes.append(fused)
        count += 1
    return count
