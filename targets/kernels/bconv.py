"""Packed ``BinaryConv2d``: sign-pack im2col + grouped XNOR/popcount GEMM + scale/bias, NHWC out.

One PrimFunc, three stages (``docs/packing.md`` for the bit convention):

1. ``sign_pad`` -- ``sp[b, c, y, x] = (x + shift[c] < 0)`` as uint8 on the *padded* grid, 0 in the
   padding. The shift is fused; every input pixel is compared once (not once per tap).
2. ``im2col`` -- ``a_t[b, g, r, s]``: word ``r`` of the K-bit patch of output pixel ``s`` in group
   ``g``, bits in the weight's flatten order ``(c, i, j)`` of the group, so the ONNX op's packed
   weight rows are used as they are (``s`` innermost: the stage vectorises along output columns).
3. ``popc``/``out`` -- ``acc[b, s, o] = sum_r popc(w[o, r] ^ a_t[b, o // Og, r, s])`` in a register
   tile (``mr`` pixels x ``nr`` output channels, the pixel's patch word broadcast against a vector
   of weight words), then ``(K - 2 acc - corr[pat[s], o]) * scale[o] + bias[o]``, written as
   ``out[b, s, o]``: channels-last, which is the token layout BHViT's GC block goes on in.

Why channels along the vector: the border correction is then one contiguous row ``corr[pat[s]]``
per pixel. With pixels along the vector (the previous layout) it was a 16-lane gather per output
channel, a third of the kernel's time at Tiny's first stage (0.39 -> 0.26 ms without it), and the
NCHW result needed a transpose back to tokens after every conv.

Zero padding happens *after* the sign in the model, so a padded tap contributes 0, not +-1. It is
packed as bit 0 (+1), which adds ``w[o, tap]`` (+-1) for every padded tap; ``corr[p, o]`` is the
sum of the +-1 weights over the padded taps of border pattern ``p`` (which kernel rows/cols fall
outside the image), computed once at import in numpy as Larq Compute Engine does, and ``pat[s]``
maps each output pixel to its pattern (0 = interior, no padding, corr 0). This keeps the hot loop
free of masks and is exact (integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import tvm
from tvm import te, tirx

from .popcount_gemm import popcount_as
from .reference import WORD_BITS, num_words, unpack_bits
from .target_info import TargetLike, u64_lanes

OutDType = Literal["float32", "int32"]

SIGN_BLOCK = "sign_pad"
IM2COL_BLOCK = "im2col"
WT_BLOCK = "w_t"
ACC_BLOCK = "popc"
OUT_BLOCK = "out"


@dataclass(frozen=True)
class ConvGeometry:
    """Static shape of one ``BinaryConv2d``: NCHW input, OIHW weights, ONNX pads ``[t, l, b, r]``."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    def __post_init__(self) -> None:
        if min(self.batch, self.channels, self.height, self.width, self.out_channels, self.group) < 1:
            raise ValueError(f"bconv needs positive sizes, got {self}")
        if self.channels % self.group or self.out_channels % self.group:
            raise ValueError(f"C={self.channels} and O={self.out_channels} must split into {self.group} groups")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"empty output for {self}")

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.channels // self.group

    @property
    def og(self) -> int:
        """Output channels per group."""
        return self.out_channels // self.group

    @property
    def k(self) -> int:
        """Bits per patch (``in_features`` of the op)."""
        return self.cg * self.kernel[0] * self.kernel[1]

    @property
    def out_h(self) -> int:
        span = self.dilations[0] * (self.kernel[0] - 1) + 1
        return (self.height + self.pads[0] + self.pads[2] - span) // self.strides[0] + 1

    @property
    def out_w(self) -> int:
        span = self.dilations[1] * (self.kernel[1] - 1) + 1
        return (self.width + self.pads[1] + self.pads[3] - span) // self.strides[1] + 1

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Extent of the padded grid the im2col reads (only what the output windows touch)."""
        ph = (self.out_h - 1) * self.strides[0] + self.dilations[0] * (self.kernel[0] - 1) + 1
        pw = (self.out_w - 1) * self.strides[1] + self.dilations[1] * (self.kernel[1] - 1) + 1
        return ph, pw


def _outside(n_out: int, stride: int, pad: int, dil: int, taps: int, size: int) -> list[tuple[bool, ...]]:
    """Per output coordinate: which kernel taps of this axis fall outside the image."""
    return [
        tuple(not 0 <= o * stride - pad + t * dil < size for t in range(taps)) for o in range(n_out)
    ]


def _border_patterns(geom: ConvGeometry) -> tuple[list, np.ndarray]:
    """(the distinct (outside rows, outside cols) tap patterns, no padding first; each output
    pixel's pattern index ``pat [Ho*Wo]``)."""
    kh, kw = geom.kernel
    rows = _outside(geom.out_h, geom.strides[0], geom.pads[0], geom.dilations[0], kh, geom.height)
    cols = _outside(geom.out_w, geom.strides[1], geom.pads[1], geom.dilations[1], kw, geom.width)
    none = (tuple([False] * kh), tuple([False] * kw))
    keys = [none] + sorted({(r, c) for r in rows for c in cols} - {none})
    index = {key: p for p, key in enumerate(keys)}
    return keys, np.array([index[(r, c)] for r in rows for c in cols], dtype=np.int32)


def num_border_patterns(geom: ConvGeometry) -> int:
    """Rows ``P`` of the correction table of :func:`border_correction` (what the kernels declare)."""
    return len(_border_patterns(geom)[0])


def border_correction(geom: ConvGeometry, w_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pat [Ho*Wo] int32, corr [P, O] int32)``: the exact zero-padding correction.

    ``corr[p, o]`` is the sum of the +-1 weights of channel ``o`` over the taps that are padding
    for pattern ``p``; pattern 0 is always the no-padding one (so ``corr[0] == 0``).
    """
    kh, kw = geom.kernel
    keys, pat = _border_patterns(geom)
    w_pm = unpack_bits(w_bits, geom.k).astype(np.int32).reshape(geom.out_channels, geom.cg, kh, kw)
    corr = np.zeros((len(keys), geom.out_channels), dtype=np.int32)
    for p, (r, c) in enumerate(keys):
        pad_tap = np.logical_or.outer(np.array(r), np.array(c))  # [kh, kw]
        corr[p] = (w_pm * pad_tap[None, None]).sum(axis=(1, 2, 3))
    return pat, corr


def _or_tree(terms: list[tirx.Expr]) -> tirx.Expr:
    """Balanced OR of the bit terms (short dependency chains for the out-of-order core)."""
    while len(terms) > 1:
        terms = [terms[i] | terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def make_bconv(geom: ConvGeometry, *, out_dtype: OutDType = "float32", acc_dtype: str = "uint64") -> tirx.PrimFunc:
    """Unscheduled PrimFunc.

    Arguments: ``(x [B,C,H,W] f32, shift [C] f32, w_bits [O,Kw] u64, pat [Ho*Wo] i32,
    corr [P,O] i32, [scale [O] f32, bias [O] f32,] out [B,Ho*Wo,O])``; scale/bias only for
    ``out_dtype="float32"``, the int32 variant returns the exact integer conv for tests;
    ``acc_dtype``: the popcount accumulator (``popcount_gemm.acc_dtype_for``: int32 on CUDA).
    """
    g = geom
    kh, kw = g.kernel
    kwords = num_words(g.k)
    ph, pw = g.padded_hw
    ho, wo = g.out_h, g.out_w
    npat = num_border_patterns(g)
    x = te.placeholder((g.batch, g.channels, g.height, g.width), "float32", name="x")
    shift = te.placeholder((g.channels,), "float32", name="shift")
    w = te.placeholder((g.out_channels, kwords), "uint64", name="w_bits")
    pat = te.placeholder((ho * wo,), "int32", name="pat")
    corr = te.placeholder((npat, g.out_channels), "int32", name="corr")
    zero_f = tirx.const(0.0, "float32")

    def sign(b, c, y, xx):  # noqa: ANN001, ANN202 - TE index vars
        iy, ix = y - g.pads[0], xx - g.pads[1]
        inside = tirx.all(iy >= 0, iy < g.height, ix >= 0, ix < g.width)
        val = tirx.if_then_else(inside, x[b, c, iy, ix] + shift[c], zero_f)
        return tirx.Select(val < zero_f, tirx.const(1, "uint8"), tirx.const(0, "uint8"))

    sp = te.compute((g.batch, g.channels, ph, pw), sign, name=SIGN_BLOCK)

    def patch_word(b, grp, r, s):  # noqa: ANN001, ANN202
        # Each byte of the word is built in uint8 (8 sign bytes shifted and OR-ed, 64 pixels per
        # AVX-512 register) and widened once: widening every bit to uint64 first cost 8x the
        # shifts and ORs, on 8x wider vectors.
        oy, ox = s // wo, s % wo
        parts = []
        for byte in range(WORD_BITS // 8):
            terms = []
            for bit in range(8):
                pos = byte * 8 + bit
                kk = tirx.min(r * WORD_BITS + pos, g.k - 1)  # clamp keeps padding-bit loads in bounds
                c, t = kk // (kh * kw), kk % (kh * kw)
                i, j = t // kw, t % kw
                v = sp[b, grp * g.cg + c, oy * g.strides[0] + i * g.dilations[0], ox * g.strides[1] + j * g.dilations[1]]
                term = v << tirx.const(bit, "uint8")
                if kwords * WORD_BITS > g.k:
                    term = tirx.Select(r * WORD_BITS + pos < g.k, term, tirx.const(0, "uint8"))
                terms.append(term)
            parts.append(_or_tree(terms).astype("uint64") << tirx.const(byte * 8, "uint64"))
        return _or_tree(parts)

    a_t = te.compute((g.batch, g.group, kwords, ho * wo), patch_word, name=IM2COL_BLOCK)
    return te.create_prim_func([x, shift, *grouped_gemm(g, a_t, w, pat, corr, out_dtype, acc_dtype)])


def grouped_gemm(
    g: ConvGeometry, a_t: te.Tensor, w: te.Tensor, pat: te.Tensor, corr: te.Tensor, out_dtype: OutDType,
    acc_dtype: str = "uint64",
) -> list[te.Tensor]:
    """The GEMM + epilogue stages shared by both conv kernels, from the im2col words ``a_t``.

    Returns the remaining PrimFunc arguments: ``[w, pat, corr, (scale, bias,) out [B, Ho*Wo, O]]``.
    """
    hw, kwords = g.out_h * g.out_w, int(a_t.shape[2])
    # Weights as [Kw, O] (a few hundred words): the GEMM's vector of output channels is then one
    # contiguous load per K word instead of a strided gather.
    w_t = te.compute((kwords, g.out_channels), lambda r, o: w[o, r], name=WT_BLOCK)
    rr = te.reduce_axis((0, kwords), name="r")
    acc = te.compute(
        (g.batch, hw, g.out_channels),
        lambda b, s, o: te.sum(popcount_as(w_t[rr, o] ^ a_t[b, o // g.og, rr, s], acc_dtype), axis=rr),
        name=ACC_BLOCK,
    )

    def dot(b, s, o):  # noqa: ANN001, ANN202
        # popc <= K < 2^31: the narrowing cast is exact.
        return tirx.const(g.k, "int32") - tirx.const(2, "int32") * acc[b, s, o].astype("int32") - corr[pat[s], o]

    if out_dtype == "int32":
        return [w, pat, corr, te.compute((g.batch, hw, g.out_channels), dot, name=OUT_BLOCK)]
    if out_dtype != "float32":
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    scale = te.placeholder((g.out_channels,), "float32", name="scale")
    bias = te.placeholder((g.out_channels,), "float32", name="bias")
    out = te.compute(
        (g.batch, hw, g.out_channels),
        lambda b, s, o: dot(b, s, o).astype("float32") * scale[o] + bias[o],
        name=OUT_BLOCK,
    )
    return [w, pat, corr, scale, bias, out]


def _largest_divisor(n: int, candidates: tuple[int, ...]) -> int:
    return next(c for c in candidates if n % c == 0)


def schedule_tiled_popcount(
    sch: tvm.s_tir.Schedule, acc_name: str, out_name: str, *, lanes: int, mr: int, nr: Optional[int]
) -> None:
    """Register-tile a batched popcount GEMM ``acc[b, i, j] = sum_r ...`` and its epilogue ``out``.

    The batched sibling of :func:`popcount_gemm.schedule_popcount_gemm` (whose stages are 2-D):
    ``mr`` rows (unrolled) x ``nr`` columns (vectorised, ``nr`` a divisor of the column extent, so
    no lane predicate) of accumulators in registers, the epilogue computed on the tile, the fused
    ``batch x row-tiles x column-tiles`` loop parallel. Used by :mod:`bconv` (rows = output
    channels, columns = pixels) and :mod:`attention` (rows = queries, columns = keys/features).
    With no vector divisor (odd columns) the plain parallel loop nest is kept, as the 2-D schedule
    does (its local tile miscompiled for such shapes).
    """
    acc = sch.get_sblock(acc_name)
    out = sch.get_sblock(out_name)
    b, i, j, r = sch.get_loops(acc)
    m, n = int(sch.get(i).extent), int(sch.get(j).extent)
    if nr is None:
        nr = _largest_divisor(n, (2 * lanes, lanes, lanes // 2, 2, 1))
    elif n % nr:
        raise ValueError(f"nr={nr} must divide N={n}")
    if nr == 1:
        sch.parallel(sch.fuse(b, i))
        sch.parallel(sch.fuse(*sch.get_loops(out)[:2]))
        return
    mr = _largest_divisor(m, tuple(range(max(1, min(mr, m)), 0, -1)))
    io, ii = sch.split(i, [None, mr])
    jo, jv = sch.split(j, [None, nr])
    sch.reorder(b, io, jo, r, ii, jv)
    # "global": a small constant-size buffer becomes a stack alloca (kept in registers by LLVM); "local"
    # inside the parallel loop would be a TVMBackendAllocWorkspace call per tile (see popcount_gemm.py).
    sch.set_scope(acc, 0, "global")
    sch.reverse_compute_at(out, jo)
    fused = sch.fuse(b, io, jo)
    for blk in (acc, out):
        tile = [lp for lp in sch.get_loops(blk)[1:] if int(sch.get(lp).extent) > 1]
        if blk == acc:
            tile = tile[1:]  # skip r
        if tile:
            sch.vectorize(tile.pop())
        for lp in tile:
            sch.unroll(lp)
    sch.unroll(sch.get_loops(acc)[1])
    sch.parallel(fused)
    init = sch.decompose_reduction(acc, sch.get_loops(acc)[1])
    tile = [lp for lp in sch.get_loops(init)[1:] if int(sch.get(lp).extent) > 1]
    if tile:
        sch.vectorize(tile.pop())
    for lp in tile:
        sch.unroll(lp)


def schedule_bconv(func: tirx.PrimFunc, target: TargetLike, *, mr: Optional[int] = None, nr: Optional[int] = None) -> tvm.IRModule:
    """CPU schedule: row-parallel sign stage, im2col vectorised along output columns, tiled GEMM
    (``mr``: the architecture record's ``popcount_rows`` unless given)."""
    from bhvit_export.targets.arch import arch_of

    mr = mr if mr is not None else arch_of(target).popcount_rows
    sch = tvm.s_tir.Schedule(func)
    lanes = u64_lanes(target)
    sign = sch.get_sblock(SIGN_BLOCK)
    b, c, _, xx = sch.get_loops(sign)
    sch.parallel(sch.fuse(b, c))
    im = sch.get_sblock(IM2COL_BLOCK)
    b, grp, r, s = sch.get_loops(im)
    out_w = _out_w(func)  # s = oy * Wo + ox
    oy, ox = sch.split(s, [None, out_w])
    sch.reorder(b, grp, oy, r, ox)
    sch.unroll(r)
    sch.vectorize(ox)
    sch.parallel(sch.fuse(b, grp, oy))
    schedule_tiled_popcount(sch, ACC_BLOCK, OUT_BLOCK, lanes=lanes, mr=mr, nr=nr)
    return sch.mod


def _out_w(func: tirx.PrimFunc) -> int:
    """Output width, stored as a function attribute by :func:`bconv_module`."""
    return int(func.attrs["bhvit.out_w"])


def bconv_module(
    geom: ConvGeometry, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel` (CUDA targets: :func:`gpu_bconv.bconv_module_gpu`)."""
    from bhvit_export.targets.schedules.gpu.packed import is_cuda

    if is_cuda(target):
        from .gpu_bconv import bconv_module_gpu

        return bconv_module_gpu(geom, target, out_dtype=out_dtype)
    func = make_bconv(geom, out_dtype=out_dtype).with_attr("bhvit.out_w", geom.out_w)
    return schedule_bconv(func, target, **tiles)
