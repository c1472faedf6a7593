"""``BinaryAttentionScores`` for aarch64 NEON: sign-pack by compares, the NEON GEMM tiles per head.

Same arguments and results as :func:`attention.make_scores`. Why: the generic kernel packs each
64-bit word of ``q`` and ``k`` as 64 scalar compare-and-OR terms, and its GEMM accumulates
``popcount(uint64)`` into uint64 lanes (``cnt`` + three widening ``uaddlp`` per 128 bits); with a
head dim of 64 (one K word) that left Tiny's scores at 8-11% of the eor + cnt + accumulate limit on
Cortex-A72. Here:

* pack: per row (query or key) and K word, 16 ``float32x4`` ``fadd`` (the shift) + ``fcmlt``,
  turned into the word by :func:`neon_sign.sign_word`; rows parallel. Queries are ``[B*h, N, Kw]``,
  keys ``[B*h, Kw, N]`` (the GEMM reads two keys' words as one vector);
* GEMM: :func:`neon_gemm.emit_tiles` with one batch per (image, head): rows = queries, columns =
  keys, ``mr x nr`` tiles from the architecture record (overlapping edge tiles within the head);
  the epilogue ``(d - 2 popc) / scale`` per 4 keys: the generic kernel's value bit for bit (for a
  power-of-two scale, such as sqrt(64) = 8, as ``d / scale - popc * (2 / scale)``, all exact).

Needs the head dim to be a multiple of 4 and N >= 4 (:func:`supports`).
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from . import neon_gemm
from .neon_sign import QUADS, sign_word
from .reference import WORD_BITS, num_words

OutDType = str  # "float32" or "int32"


def supports(n: int, c: int, h: int) -> bool:
    """Head dims of whole ``float32x4`` vectors, and at least one 4-key column group."""
    return c % h == 0 and (c // h) % 4 == 0 and neon_gemm.supports(n)


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5 and 2.0 ** -100 < x < 2.0 ** 100


def _pack_rows(src: tirx.Buffer, shift: tirx.Buffer, dst: tirx.Buffer, rows: int, h: int, n: int, d: int,
               *, transposed: bool = False) -> None:
    """``dst[bh, i, w]`` (``dst[bh, w, i]`` if ``transposed``): the sign words of
    ``src[bh // h, i, head bh % h] + shift`` (rows parallel)."""
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), 4)
    with T.parallel(0, rows * n) as row:
        bh, i = row // n, row % n
        b, c0 = bh // h, (bh % h) * d
        for w in range(num_words(d)):
            negs = []
            for q in range(QUADS):
                e = w * WORD_BITS + 4 * q
                if e >= d:
                    negs.append(None)
                    continue
                cols = tirx.Ramp(c0 + e, 1, 4)
                negs.append(tirx.BufferLoad(src, [b, i, cols]) + tirx.BufferLoad(shift, [cols]) < zero)
            T.buffer_store(dst, sign_word(negs), [bh, w, i] if transposed else [bh, i, w])


def make_scores_neon(
    b: int, n: int, c: int, h: int, scale: float, *, out_dtype: OutDType = "float32",
    tile: neon_gemm.NeonTile = neon_gemm.NeonTile(), dotprod: bool = False,
) -> tirx.PrimFunc:
    """``(q [B,N,C], k [B,N,C], q_shift [C], k_shift [C], out [B*h,N,N])`` as :func:`attention.make_scores`."""
    if min(b, n, c, h) < 1 or not supports(n, c, h):
        raise ValueError(f"the NEON scores need h | C, C/h a multiple of 4 and N >= 4; got {(b, n, c, h)}")
    if out_dtype not in ("float32", "int32"):
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    d = c // h
    dw, rows = num_words(d), b * h
    t = tile.fit(n, n)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            q = T.arg("q", T.Buffer((b, n, c), "float32"))
            k = T.arg("k", T.Buffer((b, n, c), "float32"))
            qs = T.arg("q_shift", T.Buffer((c,), "float32"))
            ks = T.arg("k_shift", T.Buffer((c,), "float32"))
            out = T.arg("out", T.Buffer((rows, n, n), out_dtype))
            T.func_attr({"tirx.noalias": True})
            q_bits = T.alloc_buffer((rows, n, dw), "uint64")
            k_bits = T.alloc_buffer((rows, dw, n), "uint64")
            _pack_rows(q, qs, q_bits, rows, h, n, d)
            _pack_rows(k, ks, k_bits, rows, h, n, d, transposed=True)
            dd, two = tirx.const(d, "int32"), tirx.const(2, "int32")
            f32x4 = lambda v: tirx.Broadcast(tirx.const(v, "float32"), 4)  # noqa: E731

            def store(bh: tirx.Expr, i: tirx.Expr, col: tirx.Expr, popc: tirx.Expr) -> None:
                if out_dtype == "int32":
                    val = dd - two * popc
                elif _power_of_two(scale):
                    # (d - 2 popc) / scale = d / scale - popc * (2 / scale), every term exact
                    # (powers of two, |values| < 2^24): one convert and a
                    # fused multiply-subtract instead of shift, subtract, convert, multiply.
                    val = f32x4(d / scale) - popc.astype("float32x4") * f32x4(2.0 / scale)
                else:
                    val = (dd - two * popc).astype("float32x4") / f32x4(scale)
                T.buffer_store(out, val, [bh, i, tirx.Ramp(col, 1, 4)])

            neon_gemm.emit_tiles(
                n, n, dw, a_word=lambda bh, i, r, _col: q_bits[bh, i, r],
                w_pair=lambda bh, r, col: tirx.BufferLoad(k_bits, [bh, r, tirx.Ramp(col, 1, 2)]),
                store=store, combine="xor", tile=t, dotprod=dotprod, batch=rows,
            )
    return ib.get()


def qd_supports(n: int, c: int, h: int) -> bool:
    """Head dims of whole ``float32x4`` vectors (the context's columns are the head's features)."""
    return c % h == 0 and (c // h) % 4 == 0 and n >= 1


def qd_supports_shape(b: int, n: int, c: int, h: int) -> bool:
    """:func:`qd_supports` on the kernel builder's shape (the lowering table's predicate)."""
    return qd_supports(n, c, h)


def _pack_planes(p: tirx.Buffer, t: tirx.Buffer, planes: tirx.Buffer, rowterm: tirx.Buffer, rows: int, h: int,
                 n: int) -> None:
    """Per (image*head, query): the level bit planes of the probabilities along the keys.

    ``planes[bh, i, 3w : 3w + 3] = (L0, L1, L1)`` words (``L = sum_j [p >= t_j]``, ``L0 = L & 1``,
    ``L1 = L >> 1``; L1 twice so the AND-popcount GEMM's plain sum weighs it 2) and
    ``rowterm[bh, i] = sum_w popc(L0) + 2 popc(L1)``.
    """
    nw = num_words(n)
    with T.parallel(0, rows * n) as row:
        bh, i = row // n, row % n
        b, hh = bh // h, bh % h
        total = None
        for w in range(nw):
            l0, l1 = [], []
            for q in range(QUADS):
                m0 = w * WORD_BITS + 4 * q
                if m0 >= n:
                    l0.append(None)
                    l1.append(None)
                    continue
                lanes = tirx.Ramp(m0, 1, 4)
                if m0 + 4 <= n:
                    pv = tirx.BufferLoad(p, [b, hh, i, lanes])
                else:  # the last keys: clamped loads, lanes past N masked below
                    pv = tirx.BufferLoad(p, [b, hh, i, tirx.min(lanes, tirx.Broadcast(tirx.const(n - 1, "int32"), 4))])
                one, zero = tirx.Broadcast(tirx.const(1, "int32"), 4), tirx.Broadcast(tirx.const(0, "int32"), 4)
                lv = None
                for j in range(3):
                    ge = tirx.Select(pv >= tirx.Broadcast(t[hh, j], 4), one, zero)
                    lv = ge if lv is None else lv + ge
                odd = (lv & one) != zero
                high = lv >= tirx.Broadcast(tirx.const(2, "int32"), 4)
                if m0 + 4 > n:
                    valid = lanes < tirx.Broadcast(tirx.const(n, "int32"), 4)
                    odd, high = tirx.And(odd, valid), tirx.And(high, valid)
                l0.append(odd)
                l1.append(high)
            w0, w1 = sign_word(l0), sign_word(l1)
            T.buffer_store(planes, w0, [bh, i, 3 * w])
            T.buffer_store(planes, w1, [bh, i, 3 * w + 1])
            T.buffer_store(planes, w1, [bh, i, 3 * w + 2])
            term = tirx.popcount(w0).astype("int32") + tirx.const(2, "int32") * tirx.popcount(w1).astype("int32")
            total = term if total is None else total + term
        T.buffer_store(rowterm, total, [bh, i])


def _pack_v_columns(v: tirx.Buffer, vs: tirx.Buffer, vneg: tirx.Buffer, rows: int, h: int, n: int, d: int) -> None:
    """``vneg[bh, w, e]``: bit ``m`` = ``v[b, 64w + m, head e] + shift < 0`` (packed along tokens).

    Per 4 features: one ``fcmlt`` per token, AND-ed with the token's bit and OR-ed into two 32-bit
    halves, zipped into the 4 features' uint64 words at the end.
    """
    nw, quads = num_words(n), d // 4
    u32 = lambda x: tirx.const(x, "uint32")  # noqa: E731
    zero_u = tirx.Broadcast(u32(0), 4)
    with T.parallel(0, rows * nw * quads) as task:
        bh, w, eq = task // (nw * quads), task // quads % nw, task % quads
        b, col = bh // h, (bh % h) * d + 4 * eq
        cols = tirx.Ramp(col, 1, 4)
        shift = tirx.BufferLoad(vs, [cols])
        halves = []
        for half in range(2):
            acc = None
            for bit in range(32):
                m = w * WORD_BITS + 32 * half + bit
                # Tokens past N (in the last word) stay 0: the load is clamped, the bit masked.
                neg = tirx.BufferLoad(v, [b, tirx.min(m, n - 1), cols]) + shift < tirx.Broadcast(tirx.const(0.0, "float32"), 4)
                if n % WORD_BITS:
                    neg = tirx.And(neg, tirx.Broadcast(m < n, 4))
                term = tirx.Select(neg, tirx.Broadcast(u32(1 << bit), 4), zero_u)
                acc = term if acc is None else acc | term
            halves.append(acc)
        for pair in range(2):  # features (e, e+1) then (e+2, e+3): [lo_e, hi_e, lo_e1, hi_e1]
            idx = [2 * pair, 4 + 2 * pair, 2 * pair + 1, 5 + 2 * pair]
            words = tirx.Shuffle(halves, [tirx.const(x, "int32") for x in idx])
            T.buffer_store(vneg, tirx.reinterpret("uint64x2", words), [bh, w, tirx.Ramp(4 * eq + 2 * pair, 1, 2)])


def make_qd_context_neon(
    b: int, n: int, c: int, h: int, *, out_dtype: OutDType = "float32",
    tile: neon_gemm.NeonTile = neon_gemm.NeonTile(), dotprod: bool = False,
) -> tirx.PrimFunc:
    """``(p [B,h,N,N], v [B,N,C], v_shift [C], thresholds [h,3], [alpha [h],] out [B,N,C])`` as
    :func:`attention.make_qd_context`: the same integer sums (and ``* alpha``), bit for bit.

    ``sum_m L sign(v) = rowterm - 2 (popc(L0 & vneg) + 2 popc(L1 & vneg))`` (``docs/packing.md``),
    the bracket one AND-popcount GEMM over the K words ``(L0, L1, L1)`` per 64 keys against the
    key word of ``vneg`` (:func:`neon_gemm.emit_tiles`, one batch per image and head).
    """
    if min(b, n, c, h) < 1 or not qd_supports(n, c, h):
        raise ValueError(f"the NEON QD context needs h | C and C/h a multiple of 4; got {(b, n, c, h)}")
    if out_dtype not in ("float32", "int32"):
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    d = c // h
    nw, rows = num_words(n), b * h
    t = tile.fit(n, d)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            p = T.arg("p", T.Buffer((b, h, n, n), "float32"))
            v = T.arg("v", T.Buffer((b, n, c), "float32"))
            vs = T.arg("v_shift", T.Buffer((c,), "float32"))
            thr = T.arg("thresholds", T.Buffer((h, 3), "float32"))
            alpha = T.arg("alpha", T.Buffer((h,), "float32")) if out_dtype == "float32" else None
            out = T.arg("out", T.Buffer((b, n, c), out_dtype))
            T.func_attr({"tirx.noalias": True})
            planes = T.alloc_buffer((rows, n, 3 * nw), "uint64")
            rowterm = T.alloc_buffer((rows, n), "int32")
            vneg = T.alloc_buffer((rows, nw, d), "uint64")
            _pack_planes(p, thr, planes, rowterm, rows, h, n)
            _pack_v_columns(v, vs, vneg, rows, h, n, d)
            two = tirx.const(2, "int32")

            def store(bh: tirx.Expr, i: tirx.Expr, col: tirx.Expr, popc: tirx.Expr) -> None:
                total = tirx.Broadcast(rowterm[bh, i], 4) - two * popc
                if alpha is not None:
                    total = total.astype("float32x4") * tirx.Broadcast(alpha[bh % h], 4)
                T.buffer_store(out, total, [bh // h, i, tirx.Ramp((bh % h) * d + col, 1, 4)])

            neon_gemm.emit_tiles(
                n, d, 3 * nw, a_word=lambda bh, i, r, _col: planes[bh, i, r],
                w_pair=lambda bh, r, col: tirx.BufferLoad(vneg, [bh, r // 3, tirx.Ramp(col, 1, 2)]),
                store=store, combine="and", tile=t, dotprod=dotprod, batch=rows,
            )
    return ib.get()
