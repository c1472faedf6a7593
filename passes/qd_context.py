"""Pass: QD quantization of attention probabilities and ``Pq @ sign(v)`` -> ``bhvit.QDAttentionContext``.

    P ──Mul(3)──Div(a)──Add(zp)──Round──Clip(0,3)──Mul(a)──MatMul──Transpose(0,2,1,3)──Reshape──> ctx
    mv ──Add(vs)──Sign──Reshape[B,N,h,d]──Transpose(0,2,1,3)──┘
      becomes
    QDAttentionContext(P, mv, vs, thresholds[h,3], alpha[h]) ──> ctx

The level ``L = clamp(round(3P/a + zp), 0, 3)`` is the sum of three threshold compares of P
(paper Eq. 10); ``L @ sign(v)`` is three AND/popcount products scaled by ``a`` (Eq. 11).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bhvit_export.errors import PassError

from .attention_context import context_tail, replace_context
from .graph_utils import const_value, only_consumer, split_const_operand
from .ops import qd_thresholds


def _const_operand(node: gs.Node | None, op: str) -> np.ndarray | None:
    if node is None or node.op != op or (s := split_const_operand(node)) is None:
        return None
    return s[1]


def fuse_qd_context(graph: gs.Graph) -> int:
    """Rewrite every QD-quantized attention context product; return how many were rewritten."""
    count = 0
    for softmax in list(graph.nodes):
        if softmax.op != "Softmax":
            continue
        mul3 = only_consumer(softmax.outputs[0], "Mul")
        three = _const_operand(mul3, "Mul")
        if three is None or three.size != 1 or float(three.reshape(())) != 3.0:
            continue
        div = only_consumer(mul3.outputs[0], "Div")
        alpha = _const_operand(div, "Div")
        add = only_consumer(div.outputs[0], "Add") if div is not None else None
        zp = _const_operand(add, "Add")
        rnd = only_consumer(add.outputs[0], "Round") if add is not None else None
        clip = only_consumer(rnd.outputs[0], "Clip") if rnd is not None else None
        if alpha is None or zp is None or clip is None or div.inputs[0] is not mul3.outputs[0]:
            continue
        lo = const_value(clip.inputs[1]) if len(clip.inputs) > 1 else None
        hi = const_value(clip.inputs[2]) if len(clip.inputs) > 2 else None
        if lo is None or hi is None or float(lo) != 0.0 or float(hi) != 3.0:
            continue
        mul_a = only_consumer(clip.outputs[0], "Mul")
        alpha2 = _const_operand(mul_a, "Mul")
        if alpha2 is None or not np.array_equal(alpha2.reshape(-1), alpha.reshape(-1)):
            continue
        mm = only_consumer(mul_a.outputs[0], "MatMul")
        if mm is None or mm.inputs[0] is not mul_a.outputs[0]:
            continue
        tail = context_tail(mm)
        if tail is None:
            continue
        v, rs = tail
        heads = v[2]
        a = alpha.reshape(-1).astype(np.float32)
        z = np.broadcast_to(zp.reshape(-1), a.shape).astype(np.float32)
        if a.size != heads:
            continue
        if np.any(a <= 0):
            raise PassError(
                f"{softmax.name}: attention quantizer alpha must be > 0 for threshold QD, got {a.tolist()}"
            )
        replace_context(graph, "QDAttentionContext", softmax, v, rs, {"thresholds": qd_thresholds(a, z), "alpha": a})
        count += 1
    return count
