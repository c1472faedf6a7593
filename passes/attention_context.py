"""What the two attention-context passes (QD and GSB) share: the ``Pq @ sign(v)`` tail they match
and the fused node they write in its place.

    Pq ──MatMul──Transpose(0,2,1,3)──Reshape──> ctx
    mv ──Add(vs)──Sign──Reshape[B,N,h,d]──Transpose(0,2,1,3)──┘
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .attention_scores import heads_of
from .graph_utils import bhvit_node, only_consumer


def context_tail(mm: gs.Node) -> Optional[tuple[Any, gs.Node]]:
    """For the context MatMul ``mm``: (``heads_of`` its v operand, the final Reshape), or None."""
    v = heads_of(mm.inputs[1], [0, 2, 1, 3])
    tr = only_consumer(mm.outputs[0], "Transpose")
    if v is None or tr is None or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3]:
        return None
    rs = only_consumer(tr.outputs[0], "Reshape")
    return None if rs is None else (v, rs)


def replace_context(graph: gs.Graph, op: str, softmax: gs.Node, v: Any, rs: gs.Node,
                    params: dict[str, np.ndarray]) -> None:
    """Append ``op(p, v, v_shift, **params)`` (named after the softmax) taking over ``rs``'s outputs.

    ``params``: the op's remaining inputs by their schema names (QD: thresholds, alpha; GSB: clip, rel, weights).
    """
    name = softmax.name or softmax.outputs[0].name
    inputs = {
        "p": softmax.outputs[0],
        "v": v[0],
        "v_shift": gs.Constant(f"{name}/v_shift", v[1].astype(np.float32)),
        **{k: gs.Constant(f"{name}/{k}", val) for k, val in params.items()},
    }
    fused = bhvit_node(op, f"{name}/{op}", inputs, list(rs.outputs), num_heads=v[2])
    rs.outputs.clear()
    graph.nodes.append(fused)
