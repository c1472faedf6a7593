"""Packed ``GSBAttentionContext`` kernel (GSB quantizer, spec step 6b; semantics: ``passes/ops.py``).

Per (batch, head) row ``i`` of probabilities: ``q = p / clip`` (float32, as the function body),
the row maximum ``m``, and three masks packed along keys, one bit plane each:
``B = [q > 0.5]``, ``U = [q > rel_0 m]``, ``V = [q > rel_1 m]``. ``v`` is sign-packed along keys
(``vneg = v + shift < 0``), transposed as in :mod:`.attention`. Each plane is one AND/popcount
product ``S_P = popc(P) - 2 popc(P & vneg)`` (exact integers), and the epilogue weights them:
``out = w_B S_B + w_U S_U + w_V S_V``. ``B - U`` can be -1 in GSB; weighting the three planes
separately needs no ordering between them.

The three planes share one batched GEMM: the plane index is folded into the GEMM's batch axis
(``3 * B``), so the register-tiled schedule of :func:`bconv.schedule_tiled_popcount` applies as
is; the weighted sum over planes is a separate row-parallel epilogue.
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm import te, tirx

from .attention import V_BLOCK, OutDType, _check, _packed_word, _row_parallel, v_sign_bits
from .bconv import _largest_divisor, schedule_tiled_popcount
from .reference import num_words
from .target_info import TargetLike, u64_lanes

ROWMAX_BLOCK = "rowmax"
PLANES_BLOCK = "planes"
ACC_BLOCK = "popc"
COUNT_BLOCK = "counts"
OUT_BLOCK = "out"
PLANES = 3
HALF = 0.5



def make_gsb_context(b: int, n: int, c: int, h: int, *, out_dtype: OutDType = "float32") -> tirx.PrimFunc:
    """``(p [B,h,N,N], v [B,N,C], v_shift [C], clip [1], rel [2], weights [3], out)``.

    ``out [B,N,C]`` float32; the int32 variant returns the three plane products ``[3*B, N, C]``
    (plane-major: B, U, V) and takes no ``weights``.
    """
    d = _check(b, n, c, h)
    nw = num_words(n)
    p = te.placeholder((b, h, n, n), "float32", name="p")
    v = te.placeholder((b, n, c), "float32", name="v")
    vs = te.placeholder((c,), "float32", name="v_shift")
    clip = te.placeholder((1,), "float32", name="clip")
    rel = te.placeholder((2,), "float32", name="rel")

    def q(bh, i, m):  # noqa: ANN001, ANN202
        return p[bh // h, bh % h, i, m] / clip[0]

    k = te.reduce_axis((0, n), name="k")
    rowmax = te.compute((b * h, n), lambda bh, i: te.max(q(bh, i, k), axis=k), name=ROWMAX_BLOCK)

    def mask(plane, bh, i, m):  # noqa: ANN001, ANN202
        qv = q(bh, i, m)
        mx = rowmax[bh, i]
        return tirx.Select(
            plane == 0,
            qv > tirx.const(HALF, "float32"),
            tirx.Select(plane == 1, qv > mx * rel[0], qv > mx * rel[1]),
        )

    # planes[(plane * B + bi) * h + hh, i, w]: plane-major so the GEMM batch is plane * B + bi.
    planes = te.compute(
        (PLANES * b * h, n, nw),
        lambda pb, i, w: _packed_word(n, w, lambda m: mask(pb // (b * h), pb % (b * h), i, m)),
        name=PLANES_BLOCK,
    )
    v_bits = v_sign_bits(v, vs, b * h, h, n, d)
    r = te.reduce_axis((0, nw), name="r")

    def count(pb, i, ch):  # noqa: ANN001, ANN202
        # popc(P) - 2 popc(P & vneg) per word, in wrapping uint64 (exact mod 2^64; |sum| <= N).
        bh, e = pb * h + ch // d, ch % d
        mk, vn = planes[bh, i, r], v_bits[bh % (b * h), r, e]
        return te.sum(tirx.popcount(mk) - (tirx.popcount(mk & vn) << tirx.const(1, "uint64")), axis=r)

    acc = te.compute((PLANES * b, n, c), count, name=ACC_BLOCK)
    counts = te.compute((PLANES * b, n, c), lambda pb, i, ch: acc[pb, i, ch].astype("int32"), name=COUNT_BLOCK)
    if out_dtype == "int32":
        return te.create_prim_func([p, v, vs, clip, rel, counts])
    wt = te.placeholder((PLANES,), "float32", name="weights")
    out = te.compute(
        (b, n, c),
        lambda bi, i, ch: sum(
            counts[j * b + bi, i, ch].astype("float32") * wt[j] for j in range(PLANES)
        ),
        name=OUT_BLOCK,
    )
    return te.create_prim_func([p, v, vs, clip, rel, wt, out])


def schedule_gsb_context(
    func: tirx.PrimFunc, target: TargetLike, *, mr: Optional[int] = None, nr: Optional[int] = None
) -> tvm.IRModule:
    """Row max, planes and v packs row-parallel; the GEMM tiled within one head; epilogue parallel
    (``mr``: the architecture record's ``popcount_rows`` unless given)."""
    from bhvit_export.targets.arch import arch_of

    mr = mr if mr is not None else arch_of(target).popcount_rows
    lanes = u64_lanes(target)
    sch = tvm.s_tir.Schedule(func)
    for name in (ROWMAX_BLOCK, PLANES_BLOCK, V_BLOCK):
        _row_parallel(sch, name)
    sch.vectorize(sch.get_loops(sch.get_sblock(V_BLOCK))[-1])
    if nr is None:
        d = int(func.attrs["bhvit.head_dim"])
        nr = _largest_divisor(d, (2 * lanes, lanes, lanes // 2, 2, 1))
    schedule_tiled_popcount(sch, ACC_BLOCK, COUNT_BLOCK, lanes=lanes, mr=mr, nr=nr)
    if _has_block(sch, OUT_BLOCK):
        _row_parallel(sch, OUT_BLOCK)
        sch.vectorize(sch.get_loops(sch.get_sblock(OUT_BLOCK))[-1])
    return sch.mod


def _has_block(sch: tvm.s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own error type for a missing block
        return False
    return True


def gsb_context_module(
    b: int, n: int, c: int, h: int, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled ``GSBAttentionContext`` module, ready for :func:`build.build_kernel`."""
    func = make_gsb_context(b, n, c, h, out_dtype=out_dtype).with_attr("bhvit.head_dim", c // h)
    return schedule_gsb_context(func, target, **tiles)
