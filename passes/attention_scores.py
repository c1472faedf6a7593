"""Pass: binary ``Q.K^T / sqrt(d)`` -> ``bhvit.BinaryAttentionScores`` (an XNOR/popcount product).

    mq ──Add(qs)──Sign──Reshape[B,N,h,d]──Transpose(0,2,1,3)──┐
                                                              MatMul──Div(c)──> scores
    mk ──Add(ks)──Sign──Reshape[B,N,h,d]──Transpose(0,2,3,1)──┘
      becomes
    BinaryAttentionScores(mq, mk, qs, ks; num_heads=h, scale=c) ──> scores
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import bhvit_node, const_value, only_consumer, producer, sign_source


def heads_of(t: gs.Tensor, perm: list[int]) -> tuple[gs.Tensor, np.ndarray, int] | None:
    """Match ``Transpose(perm)(Reshape(Sign(x + shift), [.., N, h, d]))``: (x, shift, h)."""
    tr = producer(t, "Transpose")
    if tr is None or list(tr.attrs.get("perm", [])) != perm:
        return None
    rs = producer(tr.inputs[0], "Reshape")
    shape = const_value(rs.inputs[1]) if rs is not None else None
    if shape is None or shape.size != 4:
        return None
    h, d = int(shape[2]), int(shape[3])
    if h <= 0 or d <= 0:
        return None
    src = sign_source(rs.inputs[0], (h * d,))
    if src is None:
        return None
    return src[0], src[1], h


def fuse_attention_scores(graph: gs.Graph) -> int:
    """Rewrite every binary attention-score product; return how many were rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "MatMul":
            continue
        q = heads_of(node.inputs[0], [0, 2, 1, 3])
        k = heads_of(node.inputs[1], [0, 2, 3, 1])
        div = only_consumer(node.outputs[0], "Div")
        if q is None or k is None or div is None or q[2] != k[2]:
            continue
        c = const_value(div.inputs[1])
        if c is None or c.size != 1 or div.inputs[0] is not node.outputs[0]:
            continue
        name = node.name or node.outputs[0].name
        inputs = {
            "q": q[0],
            "k": k[0],
            "q_shift": gs.Constant(f"{name}/q_shift", q[1].astype(np.float32)),
            "k_shift": gs.Constant(f"{name}/k_shift", k[1].astype(np.float32)),
        }
        fused = bhvit_node("BinaryAttentionScores", f"{name}/BinaryAttentionScores", inputs, list(div.outputs),
                           num_heads=q[2], scale=c.reshape(()))
        div.outputs.clear()
        graph.nodes.append(fused)
        count += 1
    return count
