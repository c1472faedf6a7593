"""Packed attention kernels: ``BinaryAttentionScores`` and ``QDAttentionContext`` (``docs/packing.md``).

Scores, per (batch, head): ``q`` and ``k`` sign-packed along the head dim ``d`` (shift fused) into
``q_bits [B*h, N, ceil(d/64)]`` and the *transposed* ``k_bits [B*h, ceil(d/64), N]``, then the XNOR
popcount GEMM ``d - 2 popc(q ^ k)`` vectorised along keys, divided by ``scale`` in the epilogue.

Context, per (batch, head): the QD levels ``L = sum_j [p >= t_hj]`` (0..3) are written as two bit
planes, ``L = L0 + 2 L1`` (``L0 = L & 1``, ``L1 = L >> 1``; exact for any thresholds, no ordering
assumed), each packed along keys ``m``. ``v`` is sign-packed as usual, ``vneg = (v + shift < 0)``,
along ``m``, transposed to ``[B*h, ceil(N/64), d]`` so the GEMM vectorises along features. The
identity of ``docs/packing.md``, ``mask . sign(v) = 2 popc(mask & vpos) - popc(mask)``, is used in
the equivalent form ``popc(mask) - 2 popc(mask & vneg)`` (mask padding bits are 0, so no validity
mask is needed; and ``vpos = NOT(v < 0)`` would be rewritten by TVM's simplifier to ``v >= 0``,
which is wrong for NaN, that must pack as +1):

    sum_m L[n, m] sign(v)[m, e] = sum_planes w_P (popc(P) - 2 popc(P & vneg_e)),  w_L0 = 1, w_L1 = 2

one AND/popcount accumulator per output, and ``alpha_h`` times that in the epilogue, written
straight into the merged-heads layout ``[B, N, C]``. Both GEMMs share the batched register-tiled
schedule of :func:`bconv.schedule_tiled_popcount`.

Measured single thread on this host (Sapphire Rapids, ``TVM_NUM_THREADS=1``, B=1, h=4, N=196,
d=64, each op imported alone and run in the Relax VM, min of 7 repeats, noisy shared CPU):

* scores: packed 0.36-1.1 ms vs float Relax lowering 6.5-12.9 ms (11-18x): the packed kernel is
  the llvm lowering;
* QD context: packed 0.45-0.68 ms vs float 0.26-0.38 ms: the float lowering (levels + a
  dlight-scheduled matmul) is *faster*, so :mod:`bhvit_export.targets.lowering` keeps it by default (the
  packed kernel is a context override). The cost here is packing the levels: 3 compares per
  probability and a scalar 64-term OR per word; the AND/popcount GEMM itself is small.
"""

from __future__ import annotations

from typing import Literal, Optional

import tvm
from tvm import te, tirx

from .bconv import _largest_divisor, _or_tree, schedule_tiled_popcount
from .popcount_gemm import popcount_as
from .reference import WORD_BITS, num_words
from .target_info import TargetLike, is_aarch64, u64_lanes

OutDType = Literal["float32", "int32"]

Q_BLOCK = "q_bits"
K_BLOCK = "k_bits"
LEVEL_BLOCK = "levels"
PLANE0_BLOCK = "plane0"
PLANE1_BLOCK = "plane1"
V_BLOCK = "v_bits"
ACC_BLOCK = "popc"
OUT_BLOCK = "out"

_ZERO = tirx.const(0.0, "float32")
_U0 = tirx.const(0, "uint64")


def _check(b: int, n: int, c: int, h: int) -> int:
    if min(b, n, c, h) < 1 or c % h:
        raise ValueError(f"attention needs positive B, N, C, h with h | C; got {(b, n, c, h)}")
    return c // h


def v_sign_bits(v: te.Tensor, vs: te.Tensor, rows: int, h: int, n: int, d: int) -> te.Tensor:
    """``sign(v + v_shift) < 0`` bits per head, packed along the tokens: ``[rows = B*h, words(N), d]``.

    The value side of both attention contexts (QD and GSB); ``v`` is ``[B, N, C]`` with head
    ``bh % h`` in channels ``(bh % h) * d ...``.
    """
    return te.compute(
        (rows, num_words(n), d),
        lambda bh, w, e: _packed_word(n, w, lambda m: v[bh // h, m, (bh % h) * d + e] + vs[(bh % h) * d + e] < _ZERO),
        name=V_BLOCK,
    )


def _packed_word(count: int, w: tirx.Expr, bit_of: "callable") -> tirx.Expr:  # type: ignore[valid-type]
    """OR over the 64 bits of word ``w`` of ``bit_of(index)`` (a bool), indices past ``count`` 0.

    The index is clamped so padding positions still load in bounds; their bit is masked.
    """
    terms = []
    for bit in range(WORD_BITS):
        idx = w * WORD_BITS + bit
        on = bit_of(tirx.min(idx, count - 1))
        if num_words(count) * WORD_BITS > count:
            on = tirx.all(idx < count, on)
        terms.append(tirx.Select(on, tirx.const(1 << bit, "uint64"), _U0))
    return _or_tree(terms)


def make_scores(
    b: int, n: int, c: int, h: int, scale: float, *, out_dtype: OutDType = "float32", acc_dtype: str = "uint64"
) -> tirx.PrimFunc:
    """``(q [B,N,C], k [B,N,C], q_shift [C], k_shift [C], out [B*h,N,N])`` (reshape to [B,h,N,N]).

    ``out`` is ``(d - 2 popc(q_h ^ k_h)) / scale`` (float32) or the int dot (``out_dtype="int32"``).
    ``acc_dtype``: the popcount accumulator (``popcount_gemm.acc_dtype_for``: int32 on CUDA).
    """
    d = _check(b, n, c, h)
    dw = num_words(d)
    q = te.placeholder((b, n, c), "float32", name="q")
    k = te.placeholder((b, n, c), "float32", name="k")
    qs = te.placeholder((c,), "float32", name="q_shift")
    ks = te.placeholder((c,), "float32", name="k_shift")

    def neg(t: te.Tensor, sh: te.Tensor, bh: tirx.Expr, row: tirx.Expr):  # noqa: ANN202
        col0 = (bh % h) * d
        return lambda e: t[bh // h, row, col0 + e] + sh[col0 + e] < _ZERO

    q_bits = te.compute((b * h, n, dw), lambda bh, i, w: _packed_word(d, w, neg(q, qs, bh, i)), name=Q_BLOCK)
    k_bits = te.compute((b * h, dw, n), lambda bh, w, j: _packed_word(d, w, neg(k, ks, bh, j)), name=K_BLOCK)
    r = te.reduce_axis((0, dw), name="r")
    acc = te.compute(
        (b * h, n, n),
        lambda bh, i, j: te.sum(popcount_as(q_bits[bh, i, r] ^ k_bits[bh, r, j], acc_dtype), axis=r),
        name=ACC_BLOCK,
    )

    def dot(bh, i, j):  # noqa: ANN001, ANN202
        return tirx.const(d, "int32") - tirx.const(2, "int32") * acc[bh, i, j].astype("int32")

    if out_dtype == "int32":
        out = te.compute((b * h, n, n), dot, name=OUT_BLOCK)
    else:
        sc = tirx.const(scale, "float32")
        out = te.compute((b * h, n, n), lambda bh, i, j: dot(bh, i, j).astype("float32") / sc, name=OUT_BLOCK)
    return te.create_prim_func([q, k, qs, ks, out])


def make_qd_context(
    b: int, n: int, c: int, h: int, *, out_dtype: OutDType = "float32", acc_dtype: str = "uint64"
) -> tirx.PrimFunc:
    """``(p [B,h,N,N], v [B,N,C], v_shift [C], thresholds [h,3], alpha [h], out [B,N,C])``.

    ``out[b, n, hh*d + e] = alpha[hh] * sum_m L[b, hh, n, m] sign(v + shift)[b, m, hh*d + e]``;
    the int32 variant returns the integer sum (no alpha, which it then does not take).
    ``acc_dtype`` as in :func:`make_scores`.
    """
    d = _check(b, n, c, h)
    nw = num_words(n)
    p = te.placeholder((b, h, n, n), "float32", name="p")
    v = te.placeholder((b, n, c), "float32", name="v")
    vs = te.placeholder((c,), "float32", name="v_shift")
    t = te.placeholder((h, 3), "float32", name="thresholds")

    def level(bh, i, m):  # noqa: ANN001, ANN202
        pv = p[bh // h, bh % h, i, m]
        ge = [(pv >= t[bh % h, j]).astype("uint8") for j in range(3)]
        return ge[0] + ge[1] + ge[2]

    lv = te.compute((b * h, n, n), level, name=LEVEL_BLOCK)
    one = tirx.const(1, "uint8")
    plane0 = te.compute(
        (b * h, n, nw), lambda bh, i, w: _packed_word(n, w, lambda m: (lv[bh, i, m] & one) == one), name=PLANE0_BLOCK
    )
    plane1 = te.compute(
        (b * h, n, nw), lambda bh, i, w: _packed_word(n, w, lambda m: lv[bh, i, m] >= tirx.const(2, "uint8")),
        name=PLANE1_BLOCK,
    )
    v_bits = v_sign_bits(v, vs, b * h, h, n, d)
    r = te.reduce_axis((0, nw), name="r")

    def count(bi, i, ch):  # noqa: ANN001, ANN202
        # Per word: popc(L0) - 2 popc(L0 & vneg) + 2 (popc(L1) - 2 popc(L1 & vneg)). The row terms
        # are in the reduction (not a separate row-sum stage) so the epilogue has no producer
        # outside the register tile. uint64 arithmetic wraps, but the sum is exact mod 2^64 and
        # |sum| <= 3N < 2^31, so the final int32 cast is exact.
        bh, e = bi * h + ch // d, ch % d
        m0, m1, vn = plane0[bh, i, r], plane1[bh, i, r], v_bits[bh, r, e]
        u1, u2 = tirx.const(1, acc_dtype), tirx.const(2, acc_dtype)

        def pc(word: tirx.Expr) -> tirx.Expr:
            return popcount_as(word, acc_dtype)

        word = pc(m0) - (pc(m0 & vn) << u1) + (pc(m1) << u1) - (pc(m1 & vn) << u2)
        return te.sum(word, axis=r)

    acc = te.compute((b, n, c), count, name=ACC_BLOCK)

    def total(bi, i, ch):  # noqa: ANN001, ANN202
        return acc[bi, i, ch].astype("int32")

    if out_dtype == "int32":
        out = te.compute((b, n, c), total, name=OUT_BLOCK)
        return te.create_prim_func([p, v, vs, t, out])
    alpha = te.placeholder((h,), "float32", name="alpha")
    out = te.compute(
        (b, n, c), lambda bi, i, ch: total(bi, i, ch).astype("float32") * alpha[ch // d], name=OUT_BLOCK
    )
    return te.create_prim_func([p, v, vs, t, alpha, out])


def _row_parallel(sch: tvm.s_tir.Schedule, name: str) -> None:
    """Fuse the leading (batch*head, row) loops into one parallel loop; bit ORs stay in the body."""
    loops = sch.get_loops(sch.get_sblock(name))
    sch.parallel(sch.fuse(*loops[:2]))


def _popcount_rows(target: TargetLike) -> int:
    """The register rows of the TE popcount GEMM on ``target`` (its architecture record)."""
    from bhvit_export.targets.arch import arch_of

    return arch_of(target).popcount_rows


def schedule_scores(func: tirx.PrimFunc, target: TargetLike, *, mr: Optional[int] = None, nr: Optional[int] = None) -> tvm.IRModule:
    """Packs row-parallel, the GEMM register-tiled (vectorised along keys; ``mr``: the architecture
    record's ``popcount_rows`` unless given)."""
    mr = mr if mr is not None else _popcount_rows(target)
    sch = tvm.s_tir.Schedule(func)
    _row_parallel(sch, Q_BLOCK)
    _row_parallel(sch, K_BLOCK)
    schedule_tiled_popcount(sch, ACC_BLOCK, OUT_BLOCK, lanes=u64_lanes(target), mr=mr, nr=nr)
    return sch.mod


def schedule_qd_context(
    func: tirx.PrimFunc, target: TargetLike, *, mr: Optional[int] = None, nr: Optional[int] = None
) -> tvm.IRModule:
    """Levels/planes/v packs row-parallel; the GEMM tiled along features within one head."""
    mr = mr if mr is not None else _popcount_rows(target)
    lanes = u64_lanes(target)
    sch = tvm.s_tir.Schedule(func)
    for name in (LEVEL_BLOCK, PLANE0_BLOCK, PLANE1_BLOCK, V_BLOCK):
        _row_parallel(sch, name)
    sch.vectorize(sch.get_loops(sch.get_sblock(LEVEL_BLOCK))[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock(V_BLOCK))[-1])
    if nr is None:
        # A column tile must stay inside one head (d divides into tiles) so ch // d is per tile.
        d = int(func.attrs["bhvit.head_dim"])
        nr = _largest_divisor(d, (2 * lanes, lanes, lanes // 2, 2, 1))
    schedule_tiled_popcount(sch, ACC_BLOCK, OUT_BLOCK, lanes=lanes, mr=mr, nr=nr)
    return sch.mod


def scores_module(
    b: int, n: int, c: int, h: int, scale: float, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled ``BinaryAttentionScores`` module, ready for :func:`build.build_kernel` (CUDA targets:
    :func:`gpu_attention.scores_module_gpu`; aarch64: :mod:`attention_neon` unless ``tiles``, the
    generic schedule's ``mr``/``nr``, are given)."""
    from bhvit_export.targets.schedules.gpu.packed import is_cuda

    if is_cuda(target):
        from .gpu_attention import scores_module_gpu

        return scores_module_gpu(b, n, c, h, scale, target, out_dtype=out_dtype)
    if is_aarch64(target) and not tiles:
        from . import attention_neon, neon_gemm

        if attention_neon.supports(n, c, h):
            tile = neon_gemm.NeonTile(**neon_gemm.arch_tile(target))
            func = attention_neon.make_scores_neon(b, n, c, h, scale, out_dtype=out_dtype, tile=tile,
                                                   dotprod=neon_gemm.has_dotprod(target))
            return tvm.IRModule({"main": func})
    return schedule_scores(make_scores(b, n, c, h, scale, out_dtype=out_dtype), target, **tiles)


def qd_context_module(
    b: int, n: int, c: int, h: int, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled ``QDAttentionContext`` module, ready for :func:`build.build_kernel` (CUDA targets:
    :func:`gpu_attention.qd_context_module_gpu`)."""
    from bhvit_export.targets.schedules.gpu.packed import is_cuda

    if is_cuda(target):
        from .gpu_attention import qd_context_module_gpu

        return qd_context_module_gpu(b, n, c, h, target, out_dtype=out_dtype)
    if is_aarch64(target) and not tiles:
        from . import attention_neon, neon_gemm

        if attention_neon.qd_supports(n, c, h):
            tile = neon_gemm.NeonTile(**neon_gemm.arch_tile(target))
            func = attention_neon.make_qd_context_neon(b, n, c, h, out_dtype=out_dtype, tile=tile,
                                                       dotprod=neon_gemm.has_dotprod(target))
            return tvm.IRModule({"main": func})
    func = make_qd_context(b, n, c, h, out_dtype=out_dtype).with_attr("bhvit.head_dim", c // h)
    return schedule_qd_context(func, target, **tiles)
