"""The channels-last ``bconv`` (:mod:`bconv_nhwc`) for aarch64: the same im2col, the NEON GEMM tiles.

Same arguments and results as :func:`bconv_nhwc.make_bconv`. Why: the generic schedule
accumulates ``popcount(uint64)`` into uint64 lanes, which LLVM lowers on NEON as ``cnt`` + three
widening ``uaddlp`` per 128 bits and word (36-40% of the eor + cnt + accumulate limit for Tiny's
convs on Cortex-A72, whole calls). Here the GEMM is :func:`neon_gemm.emit_tiles` (``uadalp`` into
16-bit lanes, ``udot`` on dotprod CPUs, widened once per tile), with

* rows = output pixels of all images (``b * Ho*Wo + s``), columns = output channels;
* the column tile ``nr`` a multiple of 4 dividing ``O/g``, so a tile stays in one group and its
  row word is ``a_t[b, group, r, s]`` of that group (one ``ld1r``);
* the epilogue of :func:`bconv.grouped_gemm` per 4 channels: ``K - 2 popc - corr[pat[s]]``, then
  ``* scale + bias`` for the float variant, stored channels-last.

The im2col stage is the one :func:`bconv_nhwc.schedule_bconv` builds (rows of output pixels
parallel, the taps of each word OR-ed, vectorised along output columns), written here directly.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from . import neon_gemm
from .bconv import ConvGeometry, OutDType, _or_tree, num_border_patterns
from .reference import WORD_BITS, num_words


def column_tile(geom: ConvGeometry, nr: int) -> Optional[int]:
    """The widest multiple of 4 up to ``nr`` that divides ``O/g`` (None: the generic kernel)."""
    return next((t for t in range(nr - nr % 4, 0, -4) if geom.og % t == 0), None)


def supports_folded(geom: ConvGeometry, grid: Optional[tuple[int, int, int, int]] = None) -> bool:
    """The shapes the folded kernel takes: ``C/g`` dividing 64, ``O/g`` a multiple of 4, and a
    packed grid (``grid``: its padding) at least as padded as the conv on every side."""
    fits = grid is None or all(gp >= p for gp, p in zip(grid, geom.pads))
    return WORD_BITS % geom.cg == 0 and column_tile(geom, 4) is not None and fits


def fold_affine(corr: np.ndarray, scale: np.ndarray, bias: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(corr_f [P, O], ns2 [O])`` of the folded kernel: ``K s + b - corr s`` per border pattern
    and channel, and ``-2 s`` (float64, rounded once to float32)."""
    s = np.asarray(scale, np.float64).reshape(-1)
    b = np.asarray(bias, np.float64).reshape(-1)
    corr_f = (k * s + b)[None, :] - np.asarray(corr, np.float64) * s[None, :]
    return np.ascontiguousarray(corr_f.astype(np.float32)), (-2.0 * s).astype(np.float32)


def make_bconv_neon(
    geom: ConvGeometry, *, out_dtype: OutDType = "float32", tile: neon_gemm.NeonTile = neon_gemm.NeonTile(),
    dotprod: bool = False, folded: bool = False, grid: Optional[tuple[int, int, int, int]] = None,
) -> tirx.PrimFunc:
    """PrimFunc ``(pk, w_bits (tap-major), pat, corr, [scale, bias,] out)`` as :func:`bconv_nhwc.make_bconv`.

    ``folded``: ``(pk, w_t_bits [Kw, O] (tap-major, transposed at import), pat, corr_f [P, O] f32,
    ns2 [O], out)`` with the affine and the border correction folded into one float table
    (:func:`fold_affine`): ``out = popc * ns2 + corr_f[pat[s]]``, one ``ucvtf``, one load and one
    ``fmla`` per 4 channels instead of ``add``, ``add``, ``sub``, ``scvtf``, three loads, ``mov``
    and ``fmla``; and no transposition of the weights into a workspace on each call. Rounding: the
    table entry is rounded once, relative to ``K |scale|``.

    ``grid`` (folded only): the padding ``[top, left, bottom, right]`` of the packed grid ``pk``,
    when it is packed once for several convs (:func:`bhvit_export.targets.importer.shared_conv_grids`);
    the conv reads it at an offset. Default: the conv's own padding."""
    g = geom
    if WORD_BITS % g.cg:
        raise ValueError(f"channels-last bconv needs C/g dividing 64, got C/g = {g.cg}")
    nr = column_tile(g, tile.nr)
    if nr is None:
        raise ValueError(f"the NEON bconv needs O/g a multiple of 4, got O/g = {g.og}")
    if out_dtype not in ("float32", "int32"):
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    kh, kw = g.kernel
    taps, per_word = kh * kw, WORD_BITS // g.cg
    kwords = num_words(g.k)
    ph, pw = g.padded_hw
    dy, dx = 0, 0
    if grid is not None:
        if not folded or not supports_folded(g, grid):
            raise ValueError(f"a shared grid needs the folded kernel and pads >= the conv's {g.pads}, got {grid}")
        ph, pw = g.height + grid[0] + grid[2], g.width + grid[1] + grid[3]
        dy, dx = grid[0] - g.pads[0], grid[1] - g.pads[1]
    ho, wo = g.out_h, g.out_w
    hw, m, n = ho * wo, g.batch * ho * wo, g.out_channels
    t = neon_gemm.NeonTile(mr=max(1, min(tile.mr, m)), nr=nr)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            pk = T.arg("pk", T.Buffer((g.batch, g.group, ph, pw), "uint64"))
            if folded:
                w_t = T.arg("w_t_bits", T.Buffer((kwords, n), "uint64"))
            else:
                w = T.arg("w_bits", T.Buffer((n, kwords), "uint64"))
            pat = T.arg("pat", T.Buffer((hw,), "int32"))
            corr = T.arg("corr_f" if folded else "corr", T.Buffer((num_border_patterns(g), n), "float32" if folded else "int32"))
            if folded:
                ns2 = T.arg("ns2", T.Buffer((n,), "float32"))
            elif out_dtype == "float32":
                scale = T.arg("scale", T.Buffer((n,), "float32"))
                bias = T.arg("bias", T.Buffer((n,), "float32"))
            out = T.arg("out", T.Buffer((g.batch, hw, n), "float32" if folded else out_dtype))
            T.func_attr({"tirx.noalias": True})
            a_t = T.alloc_buffer((g.batch, g.group, kwords, hw), "uint64")
            if not folded:
                w_t = T.alloc_buffer((kwords, n), "uint64")
                with T.parallel(0, kwords) as r:
                    with T.serial(0, n) as j:
                        T.buffer_store(w_t, w[j, r], [r, j])
            with T.parallel(0, g.batch * g.group * ho) as row:
                b, grp, oy = row // (g.group * ho), row // ho % g.group, row % ho
                for r in range(kwords):
                    with T.vectorized(0, wo) as ox:
                        terms = []
                        for q in range(per_word):
                            tap = r * per_word + q
                            if tap >= taps:
                                break
                            i, j = tap // kw, tap % kw
                            v = pk[b, grp, oy * g.strides[0] + i * g.dilations[0] + dy, ox * g.strides[1] + j * g.dilations[1] + dx]
                            terms.append(v << tirx.const(q * g.cg, "uint64") if q else v)
                        T.buffer_store(a_t, _or_tree(terms), [b, grp, r, oy * wo + ox])

            def a_word(_bi: tirx.Expr, row: tirx.Expr, r: tirx.Expr, col0: tirx.Expr) -> tirx.Expr:
                return a_t[row // hw, col0 // g.og, r, row % hw]

            kk, two = tirx.const(g.k, "int32"), tirx.const(2, "int32")

            def store(_bi: tirx.Expr, row: tirx.Expr, col: tirx.Expr, popc: tirx.Expr) -> None:
                b, s = row // hw, row % hw
                cols = tirx.Ramp(col, 1, 4)
                if folded:  # ucvtf (popc <= K < 2^24: exact), one fmla onto the pattern's table row
                    p = tirx.reinterpret("uint32x4", popc).astype("float32x4")
                    T.buffer_store(out, p * tirx.BufferLoad(ns2, [cols]) + tirx.BufferLoad(corr, [pat[s], cols]), [b, s, cols])
                    return
                dot = kk - two * popc - tirx.BufferLoad(corr, [pat[s], cols])
                if out_dtype == "float32":
                    dot = dot.astype("float32x4") * tirx.BufferLoad(scale, [cols]) + tirx.BufferLoad(bias, [cols])
                T.buffer_store(out, dot, [b, s, cols])

            neon_gemm.emit_tiles(m, n, kwords, a_word=a_word, w_pair=neon_gemm.w_columns(w_t), store=store, combine="xor", tile=t, dotprod=dotprod)
    return ib.get()
