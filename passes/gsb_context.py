"""Pass: GSB quantization of attention probabilities and ``Pq @ sign(v)`` -> ``bhvit.GSBAttentionContext``.

    P ──Div(clip)──q──ReduceMax(-1)──Mul(r_u)──Greater(q, .)──Cast──U ┐
                   │               └─Mul(r_v)──Greater(q, .)──Cast──V ├─ Add/Sub/Mul(const) ──MatMul──Transpose(0,2,1,3)──Reshape──> ctx
                   └──Round──Clip(0,1)────────────────────────────B ──┘                         │
    mv ──Add(vs)──Sign──Reshape[B,N,h,d]──Transpose(0,2,1,3)────────────────────────────────────┘
      becomes
    GSBAttentionContext(P, mv, vs, clip, rel=[r_u, r_v], weights=[w_B, w_U, w_V]) ──> ctx

GSB (spec step 6b) is three binary masks of P: ``B = [q > 0.5]`` (``clamp(round(q), 0, 1)``, round
half to even) and two relative to the row maximum. Whatever arithmetic the exporter wrote between
the masks and the MatMul, it must be a combination of the masks with constants: we check that it
is (only Add/Sub/Mul with scalar constants, and affine in B, U, V), then read its three weights by
evaluating it at the unit vectors, so no particular association order is assumed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bhvit_export.errors import PassError

from .attention_context import context_tail, replace_context
from .graph_utils import const_value, only_consumer, producer

_ARITH = ("Add", "Sub", "Mul")


def _scalar(t: gs.Tensor) -> float | None:
    v = const_value(t)
    return float(v.reshape(())) if v is not None and v.size == 1 else None


def _mask(greater: gs.Node, q: gs.Tensor, m: gs.Tensor) -> tuple[float, gs.Tensor] | None:
    """``Cast(Greater(q, Mul(m, r)))``: (r, the float mask)."""
    if greater.inputs[0] is not q:
        return None
    mul = producer(greater.inputs[1], "Mul")
    if mul is None or m not in mul.inputs:
        return None
    r = _scalar(mul.inputs[1] if mul.inputs[0] is m else mul.inputs[0])
    cast = only_consumer(greater.outputs[0], "Cast")
    if r is None or cast is None:
        return None
    return r, cast.outputs[0]


def _combination(masks: list[gs.Tensor]) -> tuple[gs.Node, np.ndarray] | None:
    """The MatMul fed by an affine combination of ``masks`` and that combination's weights.

    Walks forward from the masks through Add/Sub/Mul nodes whose other operand is a scalar
    constant or another walked value, and evaluates the region at (0,0,0) and the unit vectors.
    """
    value: dict[int, gs.Tensor] = {id(t): t for t in masks}
    region: list[gs.Node] = []
    in_region: set[int] = set()
    front = list(masks)
    matmul = None
    steps = 0
    while front:
        steps += 1
        if steps > 256:  # far larger than any quantizer expression: not this pattern
            return None
        t = front.pop(0)
        for node in list(t.outputs):
            if node.op == "MatMul":
                if node.inputs[0] is not t or (matmul is not None and matmul is not node):
                    return None
                matmul = node
                continue
            if node.op not in _ARITH or id(node) in in_region:
                continue
            if not all(id(i) in value or _scalar(i) is not None for i in node.inputs):
                # an operand not yet reached: come back when it is (its producer is in the region)
                if any(id(i) not in value and producer(i) is not None and producer(i).op in _ARITH for i in node.inputs):
                    front.append(t)
                    continue
                return None
            if node.op == "Mul" and all(id(i) in value for i in node.inputs):
                return None  # a product of two masks is not affine
            region.append(node)
            in_region.add(id(node))
            value[id(node.outputs[0])] = node.outputs[0]
            front.append(node.outputs[0])
    if matmul is None:
        return None
    out = matmul.inputs[0]

    def evaluate(b: float, u: float, v: float) -> float:
        env = {id(masks[0]): b, id(masks[1]): u, id(masks[2]): v}
        for node in region:  # region is in a valid order: each node was added once its inputs were known
            a, c = (env[id(i)] if id(i) in env else _scalar(i) for i in node.inputs)
            env[id(node.outputs[0])] = np.float32(a + c if node.op == "Add" else a - c if node.op == "Sub" else a * c)
        return float(env[id(out)])

    if id(out) not in value:
        return None
    base = evaluate(0, 0, 0)
    w = np.array([evaluate(*e) - base for e in np.eye(3)], np.float32)
    if base != 0.0 or not np.isclose(evaluate(1, 1, 1), float(w.sum()), rtol=1e-5, atol=1e-7):
        return None
    return matmul, w


def fuse_gsb_context(graph: gs.Graph) -> int:
    """Rewrite every GSB-quantized attention context product; return how many were rewritten."""
    count = 0
    for softmax in list(graph.nodes):
        if softmax.op != "Softmax":
            continue
        div = only_consumer(softmax.outputs[0], "Div")
        clip = _scalar(div.inputs[1]) if div is not None and div.inputs[0] is softmax.outputs[0] else None
        if clip is None:
            continue
        q = div.outputs[0]
        readers = {n.op: [] for n in q.outputs}
        for n in q.outputs:
            readers[n.op].append(n)
        if sorted(len(v) for v in readers.values()) != [1, 1, 2] or set(readers) != {"ReduceMax", "Round", "Greater"}:
            continue
        rmax = readers["ReduceMax"][0]
        axes = const_value(rmax.inputs[1]) if len(rmax.inputs) > 1 else np.asarray(rmax.attrs.get("axes", []))
        if axes is None or axes.size != 1 or int(rmax.attrs.get("keepdims", 1)) != 1:
            continue
        clp = only_consumer(readers["Round"][0].outputs[0], "Clip")
        lo = const_value(clp.inputs[1]) if clp is not None and len(clp.inputs) > 2 else None
        hi = const_value(clp.inputs[2]) if lo is not None else None
        if lo is None or hi is None or float(lo) != 0.0 or float(hi) != 1.0:
            continue
        rel = [_mask(g, q, rmax.outputs[0]) for g in readers["Greater"]]
        if any(r is None for r in rel):
            continue
        rel.sort(key=lambda r: r[0])  # U: the lower relative threshold, V: the higher
        combo = _combination([clp.outputs[0], rel[0][1], rel[1][1]])
        if combo is None:
            continue
        mm, weights = combo
        tail = context_tail(mm)
        if tail is None:
            continue
        v, rs = tail
        if clip <= 0:
            raise PassError(f"{softmax.name}: GSB clip must be > 0 for threshold masks, got {clip}")
        replace_context(graph, "GSBAttentionContext", softmax, v, rs, {
            "clip": np.array([clip], np.float32),
            "rel": np.array([rel[0][0], rel[1][0]], np.float32),
            "weights": weights,
        })
        count += 1
    return count
