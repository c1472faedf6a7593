"""numpy emulation of the GPU kernels' tiling: blocks, threads, shared-memory tiles, int32 registers.

Written from the decomposition the GPU schedules describe (:mod:`bhvit_export.targets.schedules.gpu.packed`), not from their
TIR: each block stages exactly the region its schedule stages into a shared tile (laid out with
the schedule's padded row stride), every thread then reads *only that tile* (a read outside the
staged region raises), accumulates popcounts in int32 (an overflow raises), and its output lands
where its thread indices say (an output written twice, or never, raises). The tile shapes come
from the same planning functions the schedules call (:func:`packed.pack_tile`,
:func:`packed.gemm_plan`), so a test of this module against :mod:`reference` checks that
the decomposition covers every output once, that the staged regions hold every word a thread
reads (ragged edges, partial words, K-chunk tails, groups and heads spanned by a column tile),
and that 32-bit accumulation is exact.

It also measures what the schedules claim about memory traffic (:class:`PackStats`): the 128-byte
lines each warp-wide global load of a packing stage touches (coalescing) and the most lanes of a
warp hitting one shared-memory bank in one read (bank conflicts).

Threads are vectorised with numpy; blocks and K chunks are Python loops: meant for small shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import numpy.typing as npt

from bhvit_export.targets.schedules.gpu.packed import PACK_THREADS, BlockPlan, GemmTiles, gemm_plan, pack_tile
from .reference import WORD_BITS, num_words, popcount

WARP = 32
LINE_BYTES = 128
BANKS = 32
BANK_BYTES = 4

#: ``bit_of(values, cols) -> bool array``: the bit of each staged value (``cols``: its column).
BitOf = Callable[[np.ndarray, np.ndarray], np.ndarray]


class EmulationError(AssertionError):
    """A decomposition fault: a read outside the staged tile, a double or missing write, an overflow."""


@dataclass
class PackStats:
    """Memory behaviour of a packing stage over all its blocks (worst case per warp instruction)."""

    lines_per_warp_load: int = 0
    bank_ways: int = 0
    blocks: int = 0


def _row_stride(cols: int, elem_bytes: int) -> int:
    """The padded row stride (elements) of a staged tile: one bank past a multiple of 32 banks
    (``packed._align_rows``: ``storage_align(factor=128/e, offset=4/e)``)."""
    factor, offset = 128 // elem_bytes, 4 // elem_bytes
    k = -(-(cols - offset) // factor) if cols > offset else 0
    return factor * k + offset


def _lines(byte_addrs: np.ndarray) -> int:
    return len(np.unique(byte_addrs // LINE_BYTES))


def _bank_ways(word_addrs: np.ndarray) -> int:
    """Most distinct 4-byte words of a warp's read that fall in one bank (same word = broadcast)."""
    uniq = np.unique(word_addrs)
    return int(np.bincount(uniq % BANKS, minlength=BANKS).max()) if len(uniq) else 0


def emulate_bitpack(
    src: npt.NDArray, bits: int, bit_of: BitOf, *, threads: int = PACK_THREADS, stats: Optional[PackStats] = None
) -> npt.NDArray[np.uint64]:
    """``[rows, bits]`` source values -> ``[rows, ceil(bits/64)]`` words, as a packing stage runs.

    Block ``(by, bx)`` owns rows ``by*R ..`` and words ``bx*W ..``; its ``R x 64W`` source tile
    (clipped to the matrix: the kernel clamps a partial word's columns to ``bits - 1``) is fetched
    by ``R*W`` threads, flat thread ``t`` taking elements ``t, t + R*W, ...`` of the row-major tile;
    thread ``(x = row, y = word)`` then ORs its 64 bits out of the tile. ``stats`` collects the
    lines per warp fetch and the bank ways per warp read.
    """
    rows, cols = src.shape
    assert cols == bits
    kw = num_words(bits)
    tw, tr = pack_tile(rows, kw, bits, threads)
    nthreads = tr * tw
    esize = src.dtype.itemsize
    stride = _row_stride(tw * WORD_BITS, esize)
    out = np.zeros((rows, kw), np.uint64)
    written = np.zeros((rows, kw), np.int64)
    for by in range(-(-rows // tr)):
        for bx in range(-(-kw // tw)):
            row0, col0 = by * tr, bx * tw * WORD_BITS
            nrows, ncols = min(tr, rows - row0), min(tw * WORD_BITS, bits - col0)
            tile = np.zeros((tr, stride), src.dtype)
            staged = np.zeros((tr, stride), bool)
            flat = np.arange(nrows * ncols)
            r, c = flat // ncols, flat % ncols
            tile[r, c] = src[row0 + r, col0 + c]
            staged[r, c] = True
            if stats is not None:
                stats.blocks += 1
                addrs = ((row0 + r) * cols + col0 + c) * esize
                for start in range(0, len(flat), nthreads):  # one fetch iteration of the block
                    step = addrs[start : start + nthreads]
                    for w in range(0, len(step), WARP):
                        stats.lines_per_warp_load = max(stats.lines_per_warp_load, _lines(step[w : w + WARP]))
            # thread (x, y): x = row in the tile (threadIdx.x), y = word (threadIdx.y); lane order x-fastest
            ty_, tx_ = np.divmod(np.arange(nthreads), tr)
            grow, gword = row0 + tx_, bx * tw + ty_
            live = (grow < rows) & (gword < kw)
            word = np.zeros(nthreads, np.uint64)
            for b in range(WORD_BITS):
                gcol = gword * WORD_BITS + b
                safe = np.minimum(gcol, bits - 1)
                lc = safe - col0
                if np.any(live & ((lc < 0) | (lc >= stride))) or not np.all(staged[tx_[live], lc[live]]):
                    raise EmulationError(f"pack block ({by}, {bx}) reads outside its staged tile at bit {b}")
                val = tile[tx_, np.clip(lc, 0, stride - 1)]
                on = live & (gcol < bits) & bit_of(val, safe)
                word |= np.where(on, np.uint64(1) << np.uint64(b), np.uint64(0))
                if stats is not None:
                    waddr = (tx_ * stride + np.clip(lc, 0, stride - 1)) * esize // BANK_BYTES
                    for w in range(0, nthreads, WARP):
                        lanes = live[w : w + WARP]
                        stats.bank_ways = max(stats.bank_ways, _bank_ways(waddr[w : w + WARP][lanes]))
            out[grow[live], gword[live]] = word[live]
            np.add.at(written, (grow[live], gword[live]), 1)
    if not np.all(written == 1):
        raise EmulationError("pack: some words written twice or never")
    return out


def sign_bits(shift: Optional[npt.ArrayLike] = None) -> BitOf:
    """``bit_of`` of the sign-packs: ``x (+ shift[col]) < 0`` (0, -0 and NaN give 0, i.e. +1)."""
    sh = None if shift is None else np.asarray(shift, np.float32)

    def bit_of(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
        v = values.astype(np.float32)
        if sh is not None:
            v = v + sh[cols]
        with np.errstate(invalid="ignore"):
            return v < np.float32(0)

    return bit_of


#: ``combine(a_words, b_word) -> int64 counts``: one K word's contribution to an accumulator.
Combine = Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]


def xor_count(a: Sequence[np.ndarray], b: np.ndarray) -> np.ndarray:
    return popcount(a[0] ^ b)


def and_count(a: Sequence[np.ndarray], b: np.ndarray) -> np.ndarray:
    return popcount(a[0] & b)


def qd_count(a: Sequence[np.ndarray], b: np.ndarray) -> np.ndarray:
    """The QD context word: ``popc(P0) - 2 popc(P0 & vneg) + 2 (popc(P1) - 2 popc(P1 & vneg))``."""
    p0, p1 = a
    return popcount(p0) - 2 * popcount(p0 & b) + 2 * popcount(p1) - 4 * popcount(p1 & b)


def emulate_popcount_gemm(
    a: Sequence[npt.NDArray[np.uint64]],
    b: npt.NDArray[np.uint64],
    combine: Combine,
    *,
    cols_per_group: Optional[int] = None,
    tiles: GemmTiles = GemmTiles(),
    max_threads: int = 1024,
) -> npt.NDArray[np.int32]:
    """int32 ``acc[z, i, j] = sum_r combine(a[z, g(j), i, r], b[z, j, r])``, as the batched GEMM runs.

    ``a``: one or more ``[Z, G, M, Kw]`` word arrays (the row operand of column group ``g(j) =
    j // cols_per_group``: the conv's group, the QD context's head; ``G = 1`` without groups);
    ``b``: ``[Z, N, Kw]`` (the column operand). Block ``(z, by, bx)`` of ``ty x tx`` threads owns
    rows ``by*ty*tm ..`` and columns ``bx*tx ..``; per chunk of ``kc`` words it stages the row
    operand's ``ty*tm x kc`` words of every group its columns span and the column operand's
    ``tx x kc`` words, then thread ``(y, x)`` adds ``combine`` of its rows ``y*tm + ii`` and column
    ``x`` into ``tm`` int32 registers.
    """
    z_, groups, m, kw = a[0].shape
    n = b.shape[1]
    gsize = cols_per_group or n
    plan: BlockPlan = gemm_plan(m, n, kw, tiles, max_threads)
    rows_blk, cols_blk = plan.ty * plan.tm, plan.tx
    out = np.zeros((z_, m, n), np.int32)
    written = np.zeros((z_, m, n), np.int64)
    ty_, tx_ = np.divmod(np.arange(plan.ty * plan.tx), plan.tx)
    for z in range(z_):
        for by in range(-(-m // rows_blk)):
            for bx in range(-(-n // cols_blk)):
                row0, col0 = by * rows_blk, bx * cols_blk
                col_last = min(col0 + cols_blk, n) - 1
                g0, g1 = col0 // gsize, col_last // gsize
                acc = np.zeros((plan.ty * plan.tx, plan.tm), np.int64)
                for r0 in range(0, kw, plan.kc):
                    nk = min(plan.kc, kw - r0)
                    nr = min(rows_blk, m - row0)
                    a_tiles = []
                    for arr in a:  # staged: groups g0..g1, the block's rows, this chunk
                        t = np.zeros((g1 - g0 + 1, rows_blk, plan.kc), np.uint64)
                        t[:, :nr, :nk] = arr[z, g0 : g1 + 1, row0 : row0 + nr, r0 : r0 + nk]
                        a_tiles.append(t)
                    nc = col_last - col0 + 1
                    b_tile = np.zeros((cols_blk, plan.kc), np.uint64)
                    b_tile[:nc, :nk] = b[z, col0 : col0 + nc, r0 : r0 + nk]
                    col = col0 + tx_
                    grp = np.minimum(col, n - 1) // gsize - g0
                    for ri in range(nk):
                        for ii in range(plan.tm):
                            row = ty_ * plan.tm + ii
                            words = [t[grp, row, ri] for t in a_tiles]
                            acc[:, ii] += combine(words, b_tile[tx_, ri])
                if np.abs(acc).max(initial=0) >= 2**31:
                    raise EmulationError("int32 accumulator overflow")
                for ii in range(plan.tm):
                    row, col = row0 + ty_ * plan.tm + ii, col0 + tx_
                    live = (row < m) & (col < n)
                    out[z, row[live], col[live]] = acc[live, ii].astype(np.int32)
                    np.add.at(written, (z, row[live], col[live]), 1)
    if not np.all(written == 1):
        raise EmulationError("GEMM: some outputs written twice or never")
    return out


# --- whole kernels ---------------------------------------------------------------------------------


def pack_kernel(x: npt.ArrayLike, shift: Optional[npt.ArrayLike] = None, stats: Optional[PackStats] = None) -> npt.NDArray[np.uint64]:
    """The GPU sign-pack ``[M, K] -> [M, Kw]``."""
    xf = np.asarray(x, np.float32)
    return emulate_bitpack(xf, xf.shape[1], sign_bits(shift), stats=stats)


def bgemm_kernel(a_bits: npt.NDArray[np.uint64], w_bits: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.int32]:
    """The GPU XNOR GEMM, int32 out: ``K - 2 popc(a ^ w)``."""
    acc = emulate_popcount_gemm([a_bits[None, None]], w_bits[None], xor_count)[0]
    return (k - 2 * acc).astype(np.int32)


def and_popcount_kernel(m_bits: npt.NDArray[np.uint64], v_bits: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """The GPU AND/popcount GEMM."""
    return emulate_popcount_gemm([m_bits[None, None]], v_bits[None], and_count)[0]


def _head_rows(t: np.ndarray, h: int) -> np.ndarray:
    """``[B, N, C] -> [B*h, N, d]`` (the stage's ``(b*h, row)`` view of the input)."""
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).transpose(0, 2, 1, 3).reshape(b * h, n, c // h)


def scores_kernel(q, k, q_shift, k_shift, num_heads: int, stats: Optional[PackStats] = None) -> npt.NDArray[np.int32]:  # noqa: ANN001
    """The GPU ``BinaryAttentionScores`` before ``/ scale``: int32 ``[B, h, N, N]``."""
    qf, kf = np.asarray(q, np.float32), np.asarray(k, np.float32)
    b, n, c = qf.shape
    d = c // num_heads
    qh, kh = _head_rows(qf, num_heads), _head_rows(kf, num_heads)
    qs, ks = np.asarray(q_shift, np.float32).reshape(num_heads, d), np.asarray(k_shift, np.float32).reshape(num_heads, d)
    q_bits = np.stack([emulate_bitpack(qh[z], d, sign_bits(qs[z % num_heads]), stats=stats) for z in range(b * num_heads)])
    k_bits = np.stack([emulate_bitpack(kh[z], d, sign_bits(ks[z % num_heads]), stats=stats) for z in range(b * num_heads)])
    acc = emulate_popcount_gemm([q_bits[:, None]], k_bits, xor_count)
    return (d - 2 * acc).astype(np.int32).reshape(b, num_heads, n, n)


def qd_context_kernel(p, v, v_shift, thresholds, num_heads: int, stats: Optional[PackStats] = None) -> npt.NDArray[np.int32]:  # noqa: ANN001
    """The GPU ``QDAttentionContext`` before ``* alpha``: int32 ``[B, N, C]``."""
    pf, vf = np.asarray(p, np.float32), np.asarray(v, np.float32)
    t = np.asarray(thresholds, np.float32)
    b, h, n, _ = pf.shape
    c = vf.shape[2]
    d = c // h
    levels = sum((pf >= t[None, :, j, None, None]).astype(np.uint8) for j in range(3)).reshape(b * h, n, n)
    plane0 = np.stack([emulate_bitpack(levels[z], n, lambda x, _c: (x & 1) == 1, stats=stats) for z in range(b * h)])
    plane1 = np.stack([emulate_bitpack(levels[z], n, lambda x, _c: x >= 2, stats=stats) for z in range(b * h)])
    # v bits: one thread per (word, feature), 64 keys each, no staging (reads coalesce along features)
    vs = np.asarray(v_shift, np.float32)
    with np.errstate(invalid="ignore"):
        vneg = (vf + vs) < 0  # [B, N, C]
    nw = num_words(n)
    v_words = np.zeros((b, c, nw), np.uint64)  # column operand [Z=b, N=C, Kw]
    for m in range(n):
        v_words[:, :, m // WORD_BITS] |= vneg[:, m, :].astype(np.uint64) << np.uint64(m % WORD_BITS)
    rows = [x.reshape(b, h, n, nw) for x in (plane0, plane1)]
    return emulate_popcount_gemm(rows, v_words, qd_count, cols_per_group=d)


def bconv_kernel(x, shift, w_bits, geom) -> npt.NDArray[np.int32]:  # noqa: ANN001
    """The GPU ``BinaryConv2d`` before scale/bias, int32 NCHW ``[B, O, Ho, Wo]`` (as the reference)."""
    from .bconv import border_correction

    g = geom
    xf = np.asarray(x, np.float32)
    kh, kw = g.kernel
    ph, pw = g.padded_hw
    with np.errstate(invalid="ignore"):
        neg = (xf + np.asarray(shift, np.float32).reshape(1, -1, 1, 1)) < 0
    sp = np.zeros((g.batch, g.channels, ph, pw), np.uint8)  # sign_pad: 1 = negative, 0 = +1 or padding
    hh, ww = min(ph - g.pads[0], g.height), min(pw - g.pads[1], g.width)
    sp[:, :, g.pads[0] : g.pads[0] + hh, g.pads[1] : g.pads[1] + ww] = neg[:, :, :hh, :ww]
    kwords = num_words(g.k)
    hw = g.out_h * g.out_w
    # im2col: word r of pixel s in group grp, bit (c, i, j) of the group's patch
    a_t = np.zeros((g.batch, g.group, hw, kwords), np.uint64)
    oy, ox = np.divmod(np.arange(hw), g.out_w)
    for kk in range(g.k):
        c, tap = divmod(kk, kh * kw)
        i, j = divmod(tap, kw)
        for grp in range(g.group):
            bit = sp[:, grp * g.cg + c, oy * g.strides[0] + i * g.dilations[0], ox * g.strides[1] + j * g.dilations[1]]
            a_t[:, grp, :, kk // WORD_BITS] |= bit.astype(np.uint64) << np.uint64(kk % WORD_BITS)
    w = np.broadcast_to(np.asarray(w_bits, np.uint64), (g.batch,) + np.shape(w_bits))
    acc = emulate_popcount_gemm([a_t], np.ascontiguousarray(w), xor_count, cols_per_group=g.og)  # [B, HW, O]
    pat, corr = border_correction(g, np.asarray(w_bits, np.uint64))
    dot = g.k - 2 * acc.astype(np.int64) - corr[pat][None]
    return dot.astype(np.int32).transpose(0, 2, 1).reshape(g.batch, g.out_channels, g.out_h, g.out_w)


__all__ = [
    "EmulationError", "PackStats", "emulate_bitpack", "emulate_popcount_gemm", "pack_kernel", "bgemm_kernel",
    "and_popcount_kernel", "scores_kernel", "qd_context_kernel", "bconv_kernel", "sign_bits",
]
