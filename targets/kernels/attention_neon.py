"""``BinaryAttentionScores`` for aarch64 NEON: sign-pack by compares, the NEON GEMM tiles per head.

Same arguments and results as :func:`attention.make_scores`. Why: the generic kernel packs each
64-bit word of ``q`` and ``k`` as 64 scalar compare-and-OR terms, and its GEMM accumulates
``popcount(uint64)`` into uint64 lanes (``cnt`` + three widening ``uaddlp`` per 128 bits); with a
head dim of 64 (one K word) that left Tiny's scores at 8-11% of the eor + cnt + accumulate limit on
Cortex-A72. Here:

* pack: per row (query or key) and K word, 16 ``float32x4`` ``fadd`` (the shift) + ``fcmlt``,
  turned into the word by :func:`neon_sign.sign_word`; rows parallel. Both packs are row-major
  ``[B*h, N, Kw]`` (the key words are read as column pairs by the GEMM below);
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


def _pack_rows(src: tirx.Buffer, shift: tirx.Buffer, dst: tirx.Buffer, rows: int, h: int, n: int, d: int) -> None:
    """``dst[bh, i, w]``: the sign words of ``src[bh // h, i, head bh % h] + shift`` (rows parallel)."""
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
            T.buffer_store(dst, sign_word(negs), [bh, i, w])


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
            k_rows = T.alloc_buffer((rows, n, dw), "uint64")
            _pack_rows(k, ks, k_rows, rows, h, n, d)
            with T.parallel(0, rows * dw) as t_row:
                with T.serial(0, n) as j:
                    T.buffer_store(k_bits, k_rows[t_row // dw, j, t_row % dw], [t_row // dw, t_row % dw, j])
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
