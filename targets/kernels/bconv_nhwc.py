"""Packed ``BinaryConv2d`` on channels-last input: pack the channels, then im2col whole taps.

BHViT's GC block runs on tokens (channels last); its grouped 3x3 convs have ``C/g`` = 16 or 32
input channels per group. Two kernels (``docs/packing.md`` for the bit convention):

1. ``sign_pack`` -- ``pk[b, g, y, x]``: the ``C/g`` sign bits of pixel ``(y, x)`` of group ``g``
   (``x + shift < 0``) as one uint64, on the padded grid (0 = +1 in the padding, corrected exactly
   by the border table as in :mod:`bconv`). One ``C/g``-lane compare per pixel and group, whose
   mask is the bit field (the :mod:`pack` trick); the padding test is per pixel, not per lane.
2. ``bconv`` -- im2col word ``r`` of output pixel ``s`` = the ``64 / (C/g)`` taps it holds, each a
   shifted ``pk`` load (4 loads per word at ``C/g`` = 16, against 64 one-bit extracts from the
   channel-first layout), vectorised along output columns; then the grouped XNOR/popcount GEMM and
   epilogue of :func:`bconv.grouped_gemm` (channels along the vector, NHWC out).

The patch bits are tap-major here (bit ``t * C/g + c`` for tap ``t``, channel ``c``) where the ONNX
op packs its weight rows channel-major (``c * kh * kw + t``): :func:`tap_major_words` permutes the
weight bits once at import; a popcount of XORs does not care about the order, as long as both
operands share it.

``C/g`` must divide 64 (:func:`supports`): a tap never straddles two words. Other shapes use
:mod:`bconv`, which reads channel-first input.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tvm
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .bconv import (
    ACC_BLOCK,
    IM2COL_BLOCK,
    OUT_BLOCK,
    ConvGeometry,
    OutDType,
    _or_tree,
    grouped_gemm,
    num_border_patterns,
    schedule_tiled_popcount,
)
from .reference import WORD_BITS, num_words, pack_bits, unpack_bits
from .target_info import TargetLike, is_aarch64, u64_lanes


def supports(geom: ConvGeometry) -> bool:
    """Taps of ``C/g`` bits tile a 64-bit word exactly."""
    return WORD_BITS % geom.cg == 0


def _check(geom: ConvGeometry) -> None:
    if not supports(geom):
        raise ValueError(f"channels-last bconv needs C/g dividing 64, got C/g = {geom.cg}")


def tap_major_words(geom: ConvGeometry, w_bits: np.ndarray) -> np.ndarray:
    """The op's weight rows (bits ``c * kh * kw + t``) re-packed tap-major (bits ``t * C/g + c``)."""
    kh, kw = geom.kernel
    w = unpack_bits(w_bits, geom.k).reshape(geom.out_channels, geom.cg, kh * kw)
    return pack_bits(np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(geom.out_channels, geom.k))


def _pixel_word(x: tirx.Buffer, sh: tirx.Buffer, b: tirx.Expr, y: tirx.Expr, xx: tirx.Expr, c0: tirx.Expr, cg: int) -> tirx.Expr:
    """The ``cg`` sign bits of ``x[b, y, xx, c0 : c0 + cg] + shift`` as a uint64."""
    zero = tirx.const(0.0, "float32")
    if cg >= 8:
        cols = tirx.Ramp(c0, 1, cg)
        neg = tirx.BufferLoad(x, [b, y, xx, cols]) + tirx.BufferLoad(sh, [cols]) < tirx.Broadcast(zero, cg)
        return tirx.reinterpret(f"uint{cg}", tirx.Cast(f"uint1x{cg}", neg)).astype("uint64")
    terms = [
        tirx.Select(x[b, y, xx, c0 + c] + sh[c0 + c] < zero, tirx.const(1 << c, "uint64"), tirx.const(0, "uint64"))
        for c in range(cg)
    ]
    return _or_tree(terms)


#: ``(x, shift, b, y, x_col, group) -> uint64``: the sign word of one pixel and group (clamped reads).
PixelWord = Callable[[tirx.Buffer, tirx.Buffer, tirx.Expr, tirx.Expr, tirx.Expr, int], tirx.Expr]


def sign_pack_grid(geom: ConvGeometry, pixel_word: PixelWord) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x [B,H,W,C] f32, shift [C] f32, pk [B,G,PH,PW] u64)`` on the padded grid:
    rows of the grid in parallel, ``pixel_word`` per pixel and group inside, 0 in the padding (the
    generic kernel below; :func:`pack_neon.make_sign_pack_nhwc_neon` per NEON register)."""
    _check(geom)
    g = geom
    ph, pw = g.padded_hw
    top, left = g.pads[0], g.pads[1]
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            x = T.arg("x", T.Buffer((g.batch, g.height, g.width, g.channels), "float32"))
            sh = T.arg("shift", T.Buffer((g.channels,), "float32"))
            pk = T.arg("pk", T.Buffer((g.batch, g.group, ph, pw), "uint64"))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.parallel(0, g.batch * ph) as row:
                b, y = row // ph, row % ph
                iy = y - top
                with T.serial(0, pw) as xx:
                    ix = xx - left
                    inside = tirx.all(iy >= 0, iy < g.height, ix >= 0, ix < g.width)
                    # Clamped reads keep the (discarded) padding loads in bounds: no branch.
                    cy = tirx.max(tirx.min(iy, g.height - 1), 0)
                    cx = tirx.max(tirx.min(ix, g.width - 1), 0)
                    for grp in range(g.group):
                        word = pixel_word(x, sh, b, cy, cx, grp)
                        T.buffer_store(pk, tirx.Select(inside, word, tirx.const(0, "uint64")), [b, grp, y, xx])
    return ib.get()


def make_sign_pack(geom: ConvGeometry) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x [B,H,W,C] f32, shift [C] f32, pk [B,G,PH,PW] u64)``."""
    return sign_pack_grid(geom, lambda x, sh, b, cy, cx, grp: _pixel_word(x, sh, b, cy, cx, grp * geom.cg, geom.cg))


def make_bconv(geom: ConvGeometry, *, out_dtype: OutDType = "float32") -> tirx.PrimFunc:
    """Unscheduled PrimFunc ``(pk [B,G,PH,PW] u64, w_bits [O,Kw] u64 (tap-major), pat [Ho*Wo] i32,
    corr [P,O] i32, [scale [O] f32, bias [O] f32,] out [B,Ho*Wo,O])``."""
    _check(geom)
    g = geom
    kh, kw = g.kernel
    taps, per_word = kh * kw, WORD_BITS // g.cg
    kwords = num_words(g.k)
    ph, pw = g.padded_hw
    ho, wo = g.out_h, g.out_w
    npat = num_border_patterns(g)
    pk = te.placeholder((g.batch, g.group, ph, pw), "uint64", name="pk")
    w = te.placeholder((g.out_channels, kwords), "uint64", name="w_bits")
    pat = te.placeholder((ho * wo,), "int32", name="pat")
    corr = te.placeholder((npat, g.out_channels), "int32", name="corr")

    def patch_word(b, grp, r, s):  # noqa: ANN001, ANN202
        oy, ox = s // wo, s % wo
        terms = []
        for q in range(per_word):
            t = r * per_word + q
            tt = tirx.min(t, taps - 1)  # clamp keeps the loads of taps past the last in bounds
            i, j = tt // kw, tt % kw
            v = pk[b, grp, oy * g.strides[0] + i * g.dilations[0], ox * g.strides[1] + j * g.dilations[1]]
            term = v << tirx.const(q * g.cg, "uint64")
            if kwords * per_word > taps:
                term = tirx.Select(t < taps, term, tirx.const(0, "uint64"))
            terms.append(term)
        return _or_tree(terms)

    a_t = te.compute((g.batch, g.group, kwords, ho * wo), patch_word, name=IM2COL_BLOCK)
    return te.create_prim_func([pk, *grouped_gemm(g, a_t, w, pat, corr, out_dtype)])


def schedule_bconv(func: tirx.PrimFunc, target: TargetLike, out_w: int, *, mr: Optional[int] = None) -> tvm.IRModule:
    """im2col vectorised along output columns (rows parallel), then the tiled popcount GEMM
    (``mr``: the architecture record's ``popcount_rows`` unless given)."""
    from bhvit_export.targets.arch import arch_of

    mr = mr if mr is not None else arch_of(target).popcount_rows
    sch = tvm.s_tir.Schedule(func)
    im = sch.get_sblock(IM2COL_BLOCK)
    b, grp, r, s = sch.get_loops(im)
    oy, ox = sch.split(s, [None, out_w])
    sch.reorder(b, grp, oy, r, ox)
    sch.unroll(r)
    sch.vectorize(ox)
    sch.parallel(sch.fuse(b, grp, oy))
    schedule_tiled_popcount(sch, ACC_BLOCK, OUT_BLOCK, lanes=u64_lanes(target), mr=mr, nr=None)
    return sch.mod


def sign_pack_module(geom: ConvGeometry, target: Optional[TargetLike] = None) -> tvm.IRModule:
    """Scheduled ``sign_pack`` module, ready for :func:`build.build_kernel` (the per-register NEON
    form of :mod:`pack_neon` on aarch64 where ``C/g`` is whole float32x4 compares)."""
    if target is not None and is_aarch64(target):
        from . import pack_neon

        if pack_neon.supports_nhwc(geom.cg):
            return tvm.IRModule({"main": pack_neon.make_sign_pack_nhwc_neon(geom)})
    return tvm.IRModule({"main": make_sign_pack(geom)})


def bconv_folded_module(geom: ConvGeometry, grid: Optional[tuple[int, int, int, int]], target: TargetLike) -> tvm.IRModule:
    """The NEON kernel with the affine and border correction folded (``bconv_nhwc_neon.make_bconv_neon(folded=True)``;
    aarch64 only, the lowering tables' ``bconv_nhwc_folded``), reading a grid padded by ``grid`` (None: its own)."""
    from . import bconv_nhwc_neon, neon_gemm

    tile = neon_gemm.NeonTile(**neon_gemm.arch_tile(target))
    func = bconv_nhwc_neon.make_bconv_neon(geom, tile=tile, dotprod=neon_gemm.has_dotprod(target), folded=True, grid=grid)
    return tvm.IRModule({"main": func})


def bconv_module(geom: ConvGeometry, target: TargetLike, *, out_dtype: OutDType = "float32") -> tvm.IRModule:
    """Scheduled ``bconv`` module (reads ``sign_pack``'s output), ready for :func:`build.build_kernel`.

    aarch64 targets get the NEON GEMM tiles (:mod:`bconv_nhwc_neon`) when ``O/g`` is a multiple of 4."""
    if is_aarch64(target):
        from . import bconv_nhwc_neon, neon_gemm

        tile = neon_gemm.NeonTile(**neon_gemm.arch_tile(target))
        if bconv_nhwc_neon.column_tile(geom, tile.nr):
            func = bconv_nhwc_neon.make_bconv_neon(geom, out_dtype=out_dtype, tile=tile, dotprod=neon_gemm.has_dotprod(target))
            return tvm.IRModule({"main": func})
    return schedule_bconv(make_bconv(geom, out_dtype=out_dtype), target, geom.out_w)
