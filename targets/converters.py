"""Relax converters for the ``bhvit`` ops (``docs/packing.md``, semantics: ``passes/ops.py``).

TVM's Relax ONNX importer dispatches on ``op_type`` alone and never reads model-local functions,
so :mod:`bhvit_export.targets.importer` registers the classes in :data:`CONVERTERS` for the duration of one
import, each bound to that import's :class:`~bhvit_export.targets.lowering.LoweringContext` (and checks that
every such node really is in the ``bhvit`` domain before converting). A converter reads its inputs
by name through the op's schema entry (:mod:`bhvit_export.passes.op_schema`) and asks the context which kernels
the op takes on the target's architecture (:data:`bhvit_export.targets.lowering.OP_KERNELS`); an op with none
there takes its float Relax lowering.

Lowering choices (correctness first; every path is exact against the ONNX function bodies):

* ``BinaryLinear`` -> two ``call_tir`` kernels from :mod:`bhvit_export.targets.kernels`: the sign-pack with the
  shift fused (``pack``), then the XNOR/popcount GEMM with the ``scale``/``bias`` epilogue
  (``bgemm``). Both are pre-scheduled for the target and marked opaque + scheduled so the Relax
  pipeline (FuseOps/FuseTIR, dlight) leaves them alone. ``packed=False`` (the context's)
  selects an all-Relax version instead (+-1 weights decoded once at import, float matmul).
* ``BinaryConv2d`` on llvm targets -> where the channels per group divide 64 (BHViT: 16, 32),
  the channels-last pair of :mod:`bhvit_export.targets.kernels.bconv_nhwc` (sign-pack of each pixel's group
  channels into a word, then tap-major im2col + GEMM); otherwise one ``call_tir`` kernel
  (:mod:`bhvit_export.targets.kernels.bconv`): sign-pack im2col with the shift fused, grouped XNOR/popcount GEMM and ``scale``/``bias``
  epilogue, written channels-last and permuted (a view FuseOps folds into the consumer) to the
  op's NCHW; the zero padding (after the sign) is corrected exactly with a per
  (border pattern, output channel) table computed here in numpy from the weights.
* ``BinaryAttentionScores`` on llvm targets -> one ``call_tir`` kernel
  (:mod:`bhvit_export.targets.kernels.attention`): per-head XNOR popcount, ``/ scale`` in the epilogue.
* ``QDAttentionContext`` takes the NEON packed kernel on aarch64 (levels as two bit planes, one
  AND-popcount GEMM; the integer sums are exact in float32) and keeps the float Relax lowering on
  x86 by default: measured
  single thread at BHViT-Tiny size (B=1, h=4, N=196, d=64) on this Sapphire Rapids host, the
  packed kernel (levels as two bit planes x AND/popcount) took 0.45-0.68 ms against 0.26-0.38 ms
  for the float path (levels + a dlight-scheduled float matmul), min of 7 repeats, three runs.
  The packed path stays available (and tested) as a context override
  (``overrides={"QDAttentionContext": ("qd_context",)}``).
* ``GSBAttentionContext`` on llvm targets -> one ``call_tir`` kernel
  (:mod:`bhvit_export.targets.kernels.gsb_context`): row max, three mask bit planes, AND/popcount per plane,
  weighted epilogue. Other targets (cuda included): the function body in Relax ops (float masks,
  one batched matmul).
* On cuda targets the same three ops use the GPU schedules of the same kernels
  (:mod:`bhvit_export.targets.kernels.gpu_bconv`, :mod:`bhvit_export.targets.kernels.gpu_attention`: ``__popcll`` into int32,
  shared-memory tiles, coalesced bit-pack stages), the QD context included
  (not measured against the float path yet); the conv always takes the channel-first kernel there.
* Other targets (the ``generic`` architecture) and ``packed=False`` keep the float Relax lowerings: for the conv,
  ``where(x + shift < 0, -1, 1)`` then ``conv2d`` with the +-1 weights decoded once at import
  (zero padding after the sign, as the spec says) and ``* scale + bias``; for attention, the
  function bodies transcribed to Relax ops.

All products are of +-1 (or 0..3 levels) values in float32, so every partial sum is an integer
below 2^24 and the float path is bit-exact with the packed popcount arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import tvm
from tvm import relax

from bhvit_export.errors import TargetError
from bhvit_export.passes.op_schema import SCHEMAS
from bhvit_export.passes.ops import unpack_bits

from .lowering import LoweringContext

#: A converter's inputs by their schema names (Relax expressions; None for an absent optional one).
Args = dict[str, Optional[relax.Expr]]


def _shape(expr: relax.Expr, what: str) -> list[int]:
    """Static shape of a tensor-typed Relax expression (the importer is run on static shapes)."""
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        raise TargetError(f"{what}: needs a static shape, got {ty}")
    try:
        return [int(s) for s in shape.values]
    except TypeError as err:  # a symbolic dim
        raise TargetError(f"{what}: needs a static shape, got {ty}") from err


def _const_array(expr: relax.Expr, what: str) -> np.ndarray:
    """The numpy value of a constant input (weights are initializers, folded as constants)."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    raise TargetError(f"{what} must be a constant initializer to be lowered, got {type(expr).__name__}")


def _name(attr: dict[str, Any], op: str) -> str:
    return str(attr.get("tvm_custom", {}).get("name") or op)


def _sign(bb: relax.BlockBuilder, x: relax.Expr, shift: Optional[relax.Expr]) -> relax.Expr:
    """+-1 of ``x + shift`` with ``bit = (x + shift) < 0`` (so 0 and NaN give +1)."""
    xs = bb.normalize(relax.op.add(x, shift)) if shift is not None else x
    neg = relax.op.less(xs, relax.const(0.0, "float32"))
    return bb.normalize(relax.op.where(neg, relax.const(-1.0, "float32"), relax.const(1.0, "float32")))


def _decode_weights(w_bits: relax.Expr, k: int, what: str) -> np.ndarray:
    """+-1 float32 ``[N, K]`` rows from the packed uint64 words (numpy, once, at import)."""
    words = _const_array(w_bits, f"{what}: w_bits")
    if words.dtype != np.uint64 or words.ndim != 2 or words.shape[1] != -(-k // 64):
        raise TargetError(f"{what}: w_bits must be uint64 [N, ceil({k}/64)], got {words.dtype}{list(words.shape)}")
    return unpack_bits(words, k)


def _float_linear(bb: relax.BlockBuilder, a: relax.Expr, w_bits: relax.Expr, k: int, scale: relax.Expr, bias: relax.Expr, what: str) -> relax.Expr:
    """``(a @ w.T) * scale + bias`` with the +-1 weights decoded once (the all-Relax lowering)."""
    w_pm = _decode_weights(w_bits, k, what)
    d = bb.normalize(relax.op.matmul(a, relax.const(np.ascontiguousarray(w_pm.T))))
    return relax.op.add(relax.op.multiply(d, scale), bias)


def _vector(bb: relax.BlockBuilder, t: relax.Expr, size: int, what: str) -> relax.Expr:
    """A float32 per-channel operand (``[C]``, ``[1, C, 1, 1]``, ...) as ``[size]`` (a free reshape)."""
    shape = _shape(t, what)
    if int(np.prod(shape, dtype=np.int64)) != size or t.ty.dtype != "float32" or sum(d != 1 for d in shape) > 1:
        raise TargetError(f"{what}: expected float32 with {size} per-channel values, got {t.ty}")
    return t if shape == [size] else bb.normalize(relax.op.reshape(t, [size]))


def _f32(t: relax.Expr, what: str) -> None:
    if t.ty.dtype != "float32":
        raise TargetError(f"{what}: expected float32, got {t.ty.dtype}")


class _BhvitConverter:
    """One ``bhvit`` op: ``lower(ctx, bb, args, attr)`` with ``args`` its inputs by schema name."""

    op: str

    @classmethod
    def bind(cls, ctx: LoweringContext) -> "BoundConverter":
        return BoundConverter(cls, ctx)


@dataclass(frozen=True)
class BoundConverter:
    """A converter with one import's context: what TVM's convert map holds during that import.

    The importer asks each entry for the ``_impl_vN`` of an opset (the bhvit domain has one
    version) and calls it as ``impl(bb, inputs, attr, params)`` with the inputs in ONNX order.
    """

    converter: type
    ctx: LoweringContext

    def get_converter(self, opset: int) -> Callable[..., relax.Expr]:  # noqa: ARG002 - one version
        conv, ctx = self.converter, self.ctx

        def impl(bb: relax.BlockBuilder, inputs: list, attr: dict[str, Any], params: Any) -> relax.Expr:  # noqa: ARG001
            what = f"{conv.op} {_name(attr, conv.op)}"
            return conv.lower(ctx, bb, SCHEMAS[conv.op].named(list(inputs), what), attr)

        return impl


def _rows(bb: relax.BlockBuilder, t: relax.Expr, shape: list[int]) -> relax.Expr:
    """``t`` viewed as ``[prod(shape[:-1]), shape[-1]]`` (a free reshape; none if already 2-D)."""
    if len(shape) == 2:
        return t
    return bb.normalize(relax.op.reshape(t, [int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]]))


def _unrows(t: relax.Expr, lead: list[int], n: int) -> relax.Expr:
    """Inverse of :func:`_rows` for an ``[M, n]`` result of rows ``lead``."""
    return t if len(lead) == 1 else relax.op.reshape(t, lead + [n])


def _pack_rows(ctx: LoweringContext, bb: relax.BlockBuilder, x2: relax.Expr, shift: relax.Expr, m: int, k: int) -> relax.Expr:
    """The sign-pack kernel (shift fused) on ``[M, K]`` rows: uint64 ``[M, ceil(K/64)]``."""
    gv = bb.add_func(ctx.kernel("pack", m, k), f"bhvit_pack_{m}x{k}")
    return bb.emit(relax.call_tir(gv, [x2, shift], relax.TensorType([m, -(-k // 64)], "uint64")))


def _bgemm_rows(ctx: LoweringContext, bb: relax.BlockBuilder, a_bits: relax.Expr, w_bits: relax.Expr, scale: relax.Expr,
                bias: relax.Expr, m: int, n: int, k: int, op: str) -> relax.Expr:
    """The XNOR/popcount GEMM kernel with its scale/bias epilogue on packed ``[M, ceil(K/64)]`` rows:
    the folded kernel (``bgemm.make_bgemm_neon_folded``) where ``op`` takes it here and scale, bias
    and weights are constants, else ``bgemm``."""
    consts = all(isinstance(e, tvm.ir.GenericConst) for e in (w_bits, scale, bias))
    if consts and ctx.takes(op, "bgemm_folded", m, n, k):
        from .kernels.bgemm import fold_affine

        words = _const_array(w_bits, f"{op}: w_bits")
        ns2, kb = fold_affine(_const_array(scale, f"{op}: scale"), _const_array(bias, f"{op}: bias"), k)
        if ns2.size != n or kb.size != n:
            raise TargetError(f"{op}: expected float32 scale/bias with {n} per-channel values, got {ns2.size}, {kb.size}")
        if words.dtype != np.uint64 or words.shape != (n, -(-k // 64)):
            raise TargetError(f"{op}: w_bits must be uint64 [{n}, {-(-k // 64)}], got {words.dtype}{list(words.shape)}")
        gv = bb.add_func(ctx.kernel("bgemm_folded", m, n, k), f"bhvit_bgemm_{m}x{n}x{k}")
        args = [a_bits, relax.const(np.ascontiguousarray(words.T)), relax.const(ns2), relax.const(kb)]
        return bb.emit(relax.call_tir(gv, args, relax.TensorType([m, n], "float32")))
    scale, bias = _vector(bb, scale, n, f"{op}: scale"), _vector(bb, bias, n, f"{op}: bias")
    gv = bb.add_func(ctx.kernel("bgemm", m, n, k), f"bhvit_bgemm_{m}x{n}x{k}")
    return bb.emit(relax.call_tir(gv, [a_bits, w_bits, scale, bias], relax.TensorType([m, n], "float32")))


class BinaryLinear(_BhvitConverter):
    """``(K - 2 popc(pack(x + shift) ^ w)) * scale + bias`` over the last axis."""

    op = "BinaryLinear"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any], row: str = "BinaryLinear"):
        """``row``: the op whose kernels decide (``BinaryExpandPack`` reuses this lowering on CUDA)."""
        what = f"BinaryLinear {_name(attr, 'BinaryLinear')}"
        x, shift, w_bits, scale, bias = (args[k] for k in ("x", "shift", "w_bits", "scale", "bias"))
        xshape = _shape(x, f"{what}: x")
        k = int(attr.get("in_features", xshape[-1]))
        if xshape[-1] != k:
            raise TargetError(f"{what}: x has {xshape[-1]} features, in_features is {k}")
        n = _shape(w_bits, f"{what}: w_bits")[0]
        m = int(np.prod(xshape[:-1], dtype=np.int64))
        if not ctx.uses(row, "bgemm"):
            return _float_linear(bb, _sign(bb, x, shift), w_bits, k, scale, bias, what)
        if _shape(shift, f"{what}: shift") != [k] or _shape(scale, f"{what}: scale") != [n] or _shape(
            bias, f"{what}: bias"
        ) != [n] or x.ty.dtype != "float32":
            raise TargetError(f"{what}: expected float32 x, shift [{k}], scale/bias [{n}]")
        a_bits = _pack_rows(ctx, bb, _rows(bb, x, xshape), shift, m, k)
        return _unrows(_bgemm_rows(ctx, bb, a_bits, w_bits, scale, bias, m, n, k, row), xshape[:-1], n)


def _bits_from_signs(bb: relax.BlockBuilder, v: relax.Expr, lead: list[int], n: int) -> relax.Expr:
    """Relax ops packing ``v < 0`` along the last axis into uint64 words (``n`` a multiple of 64)."""
    neg = bb.normalize(relax.op.astype(relax.op.less(v, relax.const(0.0, "float32")), "uint64"))
    words = bb.normalize(relax.op.reshape(neg, lead + [n // 64, 64]))
    weights = relax.const(np.arange(64, dtype=np.uint64))
    return relax.op.sum(relax.op.left_shift(words, weights), axis=[-1])


def _signs_from_bits(bb: relax.BlockBuilder, bits: relax.Expr, lead: list[int], k: int) -> relax.Expr:
    """Relax ops unpacking uint64 words ``[..., Kw]`` into +-1 float32 ``[..., K]`` (bit 1 = -1)."""
    kw = -(-k // 64)
    planes = relax.op.right_shift(relax.op.expand_dims(bits, -1), relax.const(np.arange(64, dtype=np.uint64)))
    b = bb.normalize(relax.op.bitwise_and(planes, relax.const(np.ones(1, np.uint64))))
    flat = bb.normalize(relax.op.reshape(b, lead + [kw * 64]))
    if kw * 64 != k:
        flat = bb.normalize(relax.op.strided_slice(flat, axes=[len(lead)], begin=[0], end=[k]))
    f = relax.op.astype(flat, "float32")
    return bb.normalize(relax.op.subtract(relax.const(1.0, "float32"), relax.op.multiply(f, relax.const(2.0, "float32"))))


def _folded_expand_pack(
    ctx: LoweringContext, op: str, args: Args, shape: tuple[int, int, int, int], what: str
) -> Optional[tuple[tvm.tirx.PrimFunc, list[relax.Expr]]]:
    """The kernel with folded constants (:mod:`bhvit_export.targets.kernels.expand_pack_neon`) and those
    constants (``params``, ``mb2``), or None where it does not apply here: another architecture, a
    shape it does not take, or per-channel vectors that are not constants."""
    from .kernels import expand_pack_neon

    m, n, c, ratio = shape
    names = ("scale", "bias", "rp_shift", "rp_slope", "rp_bias", "next_shift")
    if not ctx.takes(op, "expand_pack_folded", m, n, c, ratio) or not all(
        isinstance(args[nm], tvm.ir.GenericConst) for nm in names
    ):
        return None
    scale, bias, b1, slope, b2, nshift = (_const_array(args[nm], f"{what}: {nm}").reshape(-1) for nm in names)
    if any(v.size != n for v in (scale, bias, b1, slope, b2, nshift)):
        raise TargetError(f"{what}: expected float32 per-channel vectors of {n} values")
    params, mb2 = expand_pack_neon.fold_params(scale, bias, b1, slope, b2, nshift, c, ratio)
    kernel = ctx.kernel("expand_pack_folded", m, n, c, ratio, expand_pack_neon.unit_slopes(slope))
    return kernel, [relax.const(params), relax.const(mb2)]


class BinaryExpandPack(_BhvitConverter):
    """The MLP expansion (``passes/mlp_expand.py``): packed bits of ``h + next_shift`` and ``h``'s channel means."""

    op = "BinaryExpandPack"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"BinaryExpandPack {_name(attr, 'BinaryExpandPack')}"
        x, shift, w_bits = (args[k] for k in ("x", "shift", "w_bits"))
        xshape = _shape(x, f"{what}: x")
        lead, c = xshape[:-1], xshape[-1]
        ratio = int(attr["ratio"])
        n = _shape(w_bits, f"{what}: w_bits")[0]
        if int(attr.get("in_features", c)) != c or n != c * ratio or n % 64:
            raise TargetError(f"{what}: expected x [..., C], N = ratio * C a multiple of 64; got C={c}, N={n}, ratio={ratio}")
        _f32(x, f"{what}: x")
        m = int(np.prod(lead, dtype=np.int64))
        if ctx.uses(cls.op, "expand_pack"):
            words = _const_array(w_bits, f"{what}: w_bits")
            if words.dtype != np.uint64 or words.shape != (n, -(-c // 64)):
                raise TargetError(f"{what}: w_bits must be uint64 [{n}, {-(-c // 64)}], got {words.dtype}{list(words.shape)}")
            folded = _folded_expand_pack(ctx, cls.op, args, (m, n, c, ratio), what)
            if folded is not None:  # aarch64 with constant vectors: the kernel with them folded
                kernel, consts = folded
            else:
                kernel = ctx.kernel("expand_pack", m, n, c, ratio)
                consts = [_vector(bb, args[nm], n, f"{what}: {nm}")
                          for nm in ("scale", "bias", "rp_shift", "rp_slope", "rp_bias", "next_shift")]
            x2 = _rows(bb, x, xshape)
            a_bits = _pack_rows(ctx, bb, x2, _vector(bb, shift, c, f"{what}: shift"), m, c)
            gv = bb.add_func(kernel, f"bhvit_expand_pack_{m}x{n}x{c}")
            args = [a_bits, x2, relax.const(np.ascontiguousarray(words.T)), *consts]
            out = bb.emit(relax.call_tir(gv, args, [relax.TensorType([m, n // 64], "uint64"), relax.TensorType([m, c], "float32")]))
            bits = bb.normalize(relax.op.reshape(relax.TupleGetItem(out, 0), lead + [n // 64]))
            pooled = bb.normalize(relax.op.reshape(relax.TupleGetItem(out, 1), lead + [c]))
            return relax.Tuple([bits, pooled])
        vecs = [_vector(bb, args[nm], n, f"{what}: {nm}") for nm in ("rp_shift", "rp_slope", "rp_bias", "next_shift")]
        d = bb.normalize(BinaryLinear.lower(ctx, bb, args, {**attr, "in_features": c}, row=cls.op))
        res = relax.op.tile(x, [1] * len(lead) + [ratio])
        pre = bb.normalize(relax.op.subtract(relax.op.add(d, res), vecs[0]))
        h = bb.normalize(relax.op.add(relax.op.where(relax.op.less(pre, relax.const(0.0, "float32")), relax.op.multiply(pre, vecs[1]), pre), vecs[2]))
        pooled = bb.normalize(relax.op.mean(relax.op.reshape(h, lead + [c, ratio]), axis=[-1]))
        hs = bb.normalize(relax.op.add(h, vecs[3]))
        if ctx.uses(cls.op, "pack"):  # the sign-pack kernel (its GPU schedule on CUDA)
            words = _pack_rows(ctx, bb, _rows(bb, hs, lead + [n]), relax.const(np.zeros(n, np.float32)), m, n)
            bits = bb.normalize(_unrows(words, lead, n // 64))
        else:
            bits = bb.normalize(_bits_from_signs(bb, hs, lead, n))
        return relax.Tuple([bits, pooled])


class PackedBinaryLinear(_BhvitConverter):
    """``BinaryLinear`` whose input is already sign-packed (``[..., ceil(K/64)]`` uint64 words)."""

    op = "PackedBinaryLinear"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"PackedBinaryLinear {_name(attr, 'PackedBinaryLinear')}"
        x_bits, w_bits, scale, bias = (args[k] for k in ("x_bits", "w_bits", "scale", "bias"))
        k = int(attr["in_features"])
        kw = -(-k // 64)
        xshape = _shape(x_bits, f"{what}: x_bits")
        if xshape[-1] != kw or x_bits.ty.dtype != "uint64":
            raise TargetError(f"{what}: x_bits must be uint64 [..., {kw}], got {x_bits.ty}")
        n = _shape(w_bits, f"{what}: w_bits")[0]
        lead = xshape[:-1]
        m = int(np.prod(lead, dtype=np.int64))
        if not ctx.uses(cls.op, "bgemm"):
            return _float_linear(bb, _signs_from_bits(bb, x_bits, lead, k), w_bits, k, scale, bias, what)
        return _unrows(_bgemm_rows(ctx, bb, _rows(bb, x_bits, xshape), w_bits, scale, bias, m, n, k, cls.op), lead, n)


class BinaryConv2d(_BhvitConverter):
    """Conv of ``sign(x + shift)`` (zero padding after the sign) with +-1 weights, ``* scale + bias``."""

    op = "BinaryConv2d"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"BinaryConv2d {_name(attr, 'BinaryConv2d')}"
        x, shift, w_bits, scale, bias = (args[k] for k in ("x", "shift", "w_bits", "scale", "bias"))
        b, c, _, _ = _shape(x, f"{what}: x")
        kh, kw = (int(v) for v in attr["kernel_shape"])
        group = int(attr.get("group", 1))
        if c % group:
            raise TargetError(f"{what}: {c} channels do not split into {group} groups")
        k = int(attr.get("in_features", (c // group) * kh * kw))
        if k != (c // group) * kh * kw:
            raise TargetError(f"{what}: in_features={k} != C/g*kh*kw = {(c // group) * kh * kw}")
        pads = [int(p) for p in attr.get("pads", (0, 0, 0, 0))]
        if ctx.uses(cls.op, "bconv") or ctx.uses(cls.op, "bconv_nhwc"):
            return cls._packed(ctx, bb, x, shift, w_bits, scale, bias, attr, pads, what)
        w_pm = _decode_weights(w_bits, k, what)
        o = w_pm.shape[0]
        w4 = w_pm.reshape(o, c // group, kh, kw)
        a = _sign(bb, x, shift)
        conv = bb.normalize(
            relax.op.nn.conv2d(
                a,
                relax.const(np.ascontiguousarray(w4)),
                strides=[int(s) for s in attr.get("strides", (1, 1))],
                # ONNX [top, left, bottom, right] == Relax (top, left, bottom, right)
                padding=pads,
                dilation=[int(d) for d in attr.get("dilations", (1, 1))],
                groups=group,
                data_layout="NCHW",
                kernel_layout="OIHW",
                out_dtype="float32",
            )
        )
        s4 = relax.op.reshape(scale, [1, o, 1, 1])
        b4 = relax.op.reshape(bias, [1, o, 1, 1])
        return relax.op.add(relax.op.multiply(conv, s4), b4)

    @staticmethod
    def _sign_pack(ctx, bb, x, shift, geom, grid, name, what):  # noqa: ANN001, ANN205
        """The channels-last sign-packed grid of ``x + shift`` (``[B, G, PH, PW]`` uint64), padded by
        ``grid`` (None: the conv's own padding). A grid already packed in this import for the same
        ``x``, shift values and grid is reused (the GC block's three convs read one)."""
        from dataclasses import replace

        b, c = geom.batch, geom.channels
        pgeom = replace(geom, pads=grid) if grid is not None else geom
        key = None
        if grid is not None and isinstance(shift, tvm.ir.GenericConst):
            key = (_const_array(shift, f"{what}: shift").tobytes(), geom.group, tuple(grid))
            for seen_x, seen_key, seen_pk in ctx.shared.get("sign_pack_nhwc", []):
                if seen_key == key and seen_x.same_as(x):
                    return seen_pk
        xt = bb.normalize(relax.op.permute_dims(x, [0, 2, 3, 1]))
        ph, pw = pgeom.padded_hw
        pack_gv = bb.add_func(ctx.kernel("sign_pack_nhwc", pgeom), f"bhvit_sign_pack_nhwc_{name}")
        pk = bb.emit(relax.call_tir(pack_gv, [xt, _vector(bb, shift, c, f"{what}: shift")],
                                    relax.TensorType([b, geom.group, ph, pw], "uint64")))
        if key is not None:
            ctx.shared.setdefault("sign_pack_nhwc", []).append((x, key, pk))
        return pk

    @staticmethod
    def _packed(ctx, bb, x, shift, w_bits, scale, bias, attr, pads, what):  # noqa: ANN001, ANN205
        """The channels-last pair (:mod:`bhvit_export.targets.kernels.bconv_nhwc`) where the op takes it and the
        groups fit, else one ``call_tir`` of :mod:`bhvit_export.targets.kernels.bconv`; NHWC output permuted to NCHW."""
        from bhvit_export.targets.kernels import bconv_nhwc
        from bhvit_export.targets.kernels.bconv import ConvGeometry, border_correction

        b, c, hgt, wid = _shape(x, f"{what}: x")
        _f32(x, f"{what}: x")
        words = _const_array(w_bits, f"{what}: w_bits")
        if len(pads) != 4:
            raise TargetError(f"{what}: pads must be [top, left, bottom, right], got {pads}")
        try:
            geom = ConvGeometry(
                b, c, hgt, wid, int(words.shape[0]),
                kernel=tuple(int(v) for v in attr["kernel_shape"]),  # type: ignore[arg-type]
                strides=tuple(int(v) for v in attr.get("strides", (1, 1))),  # type: ignore[arg-type]
                pads=tuple(pads),  # type: ignore[arg-type]
                dilations=tuple(int(v) for v in attr.get("dilations", (1, 1))),  # type: ignore[arg-type]
                group=int(attr.get("group", 1)),
            )
        except (ValueError, TypeError) as err:
            raise TargetError(f"{what}: {err}") from err
        if words.dtype != np.uint64 or words.shape != (geom.out_channels, -(-geom.k // 64)):
            raise TargetError(f"{what}: w_bits must be uint64 [O, ceil({geom.k}/64)], got {words.dtype}{list(words.shape)}")
        pat, corr = border_correction(geom, words)
        o = geom.out_channels
        hw = geom.out_h * geom.out_w
        name = f"{c}x{hgt}x{wid}_{o}_g{geom.group}_d{geom.dilations[0]}"
        if ctx.uses("BinaryConv2d", "bconv_nhwc") and bconv_nhwc.supports(geom):
            # Channels-last: the sign-pack reads x as NHWC (a permute FuseOps folds into the
            # token-layout producer) and packs each group's channels into one word per pixel.
            taps = bconv_nhwc.tap_major_words(geom, words)
            consts = isinstance(scale, tvm.ir.GenericConst) and isinstance(bias, tvm.ir.GenericConst)
            grid = ctx.conv_grids.get(_name(attr, ""))
            folded = consts and ctx.takes("BinaryConv2d", "bconv_nhwc_folded", geom, grid)
            pk = BinaryConv2d._sign_pack(ctx, bb, x, shift, geom, grid if folded else None, name, what)
            if folded:
                from bhvit_export.targets.kernels.bconv_nhwc_neon import fold_affine

                corr_f, ns2 = fold_affine(corr, _const_array(scale, f"{what}: scale"), _const_array(bias, f"{what}: bias"), geom.k)
                args = [pk, relax.const(np.ascontiguousarray(taps.T)), relax.const(pat), relax.const(corr_f), relax.const(ns2)]
                gv = bb.add_func(ctx.kernel("bconv_nhwc_folded", geom, grid), f"bhvit_bconv_nhwc_{name}")
            else:
                args = [pk, relax.const(taps), relax.const(pat), relax.const(corr),
                        _vector(bb, scale, o, f"{what}: scale"), _vector(bb, bias, o, f"{what}: bias")]
                gv = bb.add_func(ctx.kernel("bconv_nhwc", geom), f"bhvit_bconv_nhwc_{name}")
        else:
            args = [
                x,
                _vector(bb, shift, c, f"{what}: shift"),
                w_bits,
                relax.const(pat),
                relax.const(corr),
                _vector(bb, scale, o, f"{what}: scale"),
                _vector(bb, bias, o, f"{what}: bias"),
            ]
            gv = bb.add_func(ctx.kernel("bconv", geom), f"bhvit_bconv_{name}")
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType([b, hw, o], "float32")))
        # NHWC out (the kernel's layout); the op is NCHW. The token-layout consumers read it back
        # channels-last, so FuseOps turns this permute and theirs into contiguous reads.
        return relax.op.permute_dims(relax.op.reshape(y, [b, geom.out_h, geom.out_w, o]), [0, 3, 1, 2])


def _heads(bb, t: relax.Expr, b: int, n: int, h: int, perm: list[int]) -> relax.Expr:
    """``[B, N, C] -> Transpose(perm)([B, N, h, C/h])``."""
    r = bb.normalize(relax.op.reshape(t, [b, n, h, -1]))
    return bb.normalize(relax.op.permute_dims(r, perm))


class BinaryAttentionScores(_BhvitConverter):
    """``(sign(q+qs)_h . sign(k+ks)_h) / scale`` per head: ``[B, h, N, N]``."""

    op = "BinaryAttentionScores"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"BinaryAttentionScores {_name(attr, 'BinaryAttentionScores')}"
        q, k, q_shift, k_shift = (args[n] for n in ("q", "k", "q_shift", "k_shift"))
        b, n, c = _shape(q, f"{what}: q")
        h = int(attr["num_heads"])
        if c % h:
            raise TargetError(f"{what}: {c} channels do not split into {h} heads")
        scale = float(attr.get("scale", float(np.sqrt(c // h))))
        if ctx.uses(cls.op, "scores"):
            _f32(q, f"{what}: q")
            if _shape(k, f"{what}: k") != [b, n, c]:
                raise TargetError(f"{what}: k must have q's shape {[b, n, c]}")
            _f32(k, f"{what}: k")
            args = [q, k, _vector(bb, q_shift, c, f"{what}: q_shift"), _vector(bb, k_shift, c, f"{what}: k_shift")]
            gv = bb.add_func(ctx.kernel("scores", b, n, c, h, scale), f"bhvit_scores_{b}x{n}x{c}_h{h}")
            y = bb.emit(relax.call_tir(gv, args, relax.TensorType([b * h, n, n], "float32")))
            return relax.op.reshape(y, [b, h, n, n])
        qh = _heads(bb, _sign(bb, q, q_shift), b, n, h, [0, 2, 1, 3])
        kt = _heads(bb, _sign(bb, k, k_shift), b, n, h, [0, 2, 3, 1])
        dot = bb.normalize(relax.op.matmul(qh, kt))
        return relax.op.divide(dot, relax.const(scale, "float32"))


class QDAttentionContext(_BhvitConverter):
    """Per head ``alpha_h * sum_j (p >= t_hj) @ sign(v + vs)_h``, heads merged: ``[B, N, C]``."""

    op = "QDAttentionContext"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"QDAttentionContext {_name(attr, 'QDAttentionContext')}"
        p, v, v_shift, thresholds, alpha = (args[k] for k in ("p", "v", "v_shift", "thresholds", "alpha"))
        b, n, c = _shape(v, f"{what}: v")
        h = int(attr.get("num_heads", _shape(alpha, f"{what}: alpha")[0]))
        if c % h:
            raise TargetError(f"{what}: {c} channels do not split into {h} heads")
        if ctx.takes(cls.op, "qd_context", b, n, c, h):
            if _shape(p, f"{what}: p") != [b, h, n, n] or _shape(thresholds, f"{what}: thresholds") != [h, 3]:
                raise TargetError(f"{what}: expected p [{b}, {h}, {n}, {n}] and thresholds [{h}, 3]")
            for t, nm in ((p, "p"), (v, "v"), (thresholds, "thresholds")):
                _f32(t, f"{what}: {nm}")
            args = [p, v, _vector(bb, v_shift, c, f"{what}: v_shift"), thresholds, _vector(bb, alpha, h, f"{what}: alpha")]
            gv = bb.add_func(ctx.kernel("qd_context", b, n, c, h), f"bhvit_qd_context_{b}x{n}x{c}_h{h}")
            return bb.emit(relax.call_tir(gv, args, relax.TensorType([b, n, c], "float32")))
        vh = _heads(bb, _sign(bb, v, v_shift), b, n, h, [0, 2, 1, 3])
        # thresholds [h, 3] -> [3, 1, h, 1, 1] against p [1, B, h, N, N]; levels = sum of compares.
        t5 = bb.normalize(relax.op.reshape(relax.op.permute_dims(thresholds, [1, 0]), [3, 1, h, 1, 1]))
        p5 = bb.normalize(relax.op.expand_dims(p, 0))
        ge = bb.normalize(relax.op.astype(relax.op.greater_equal(p5, t5), "float32"))
        lv = bb.normalize(relax.op.sum(ge, axis=[0], keepdims=False))
        pv = bb.normalize(relax.op.matmul(lv, vh))
        pa = bb.normalize(relax.op.multiply(pv, relax.op.reshape(alpha, [1, h, 1, 1])))
        pt = bb.normalize(relax.op.permute_dims(pa, [0, 2, 1, 3]))
        return relax.op.reshape(pt, [b, n, c])


class GSBAttentionContext(_BhvitConverter):
    """GSB: ``sum_P w_P * P @ sign(v + vs)_h`` over masks B, U, V of ``p / clip``, heads merged: ``[B, N, C]``."""

    op = "GSBAttentionContext"

    @classmethod
    def lower(cls, ctx: LoweringContext, bb: relax.BlockBuilder, args: Args, attr: dict[str, Any]):
        what = f"GSBAttentionContext {_name(attr, 'GSBAttentionContext')}"
        p, v, v_shift, clip, rel, weights = (args[k] for k in ("p", "v", "v_shift", "clip", "rel", "weights"))
        b, n, c = _shape(v, f"{what}: v")
        h = int(attr["num_heads"])
        if c % h:
            raise TargetError(f"{what}: {c} channels do not split into {h} heads")
        if _shape(p, f"{what}: p") != [b, h, n, n]:
            raise TargetError(f"{what}: expected p [{b}, {h}, {n}, {n}], got {_shape(p, what)}")
        clip1, rel2, w3 = (_vector(bb, t, k, f"{what}: {nm}") for t, k, nm in ((clip, 1, "clip"), (rel, 2, "rel"), (weights, 3, "weights")))
        if ctx.uses(cls.op, "gsb_context"):
            for t, nm in ((p, "p"), (v, "v")):
                _f32(t, f"{what}: {nm}")
            args = [p, v, _vector(bb, v_shift, c, f"{what}: v_shift"), clip1, rel2, w3]
            gv = bb.add_func(ctx.kernel("gsb_context", b, n, c, h), f"bhvit_gsb_context_{b}x{n}x{c}_h{h}")
            return bb.emit(relax.call_tir(gv, args, relax.TensorType([b, n, c], "float32")))
        # The function body in Relax ops (CUDA, generic and packed=False): masks as floats, three matmuls.
        vh = _heads(bb, _sign(bb, v, v_shift), b, n, h, [0, 2, 1, 3])
        q = bb.normalize(relax.op.divide(p, clip1))
        m = bb.normalize(relax.op.max(q, axis=[-1], keepdims=True))
        half = relax.const(0.5, "float32")
        thr_u = bb.normalize(relax.op.multiply(m, relax.op.strided_slice(rel2, axes=[0], begin=[0], end=[1])))
        thr_v = bb.normalize(relax.op.multiply(m, relax.op.strided_slice(rel2, axes=[0], begin=[1], end=[2])))
        masks = [bb.normalize(relax.op.astype(relax.op.greater(q, t), "float32")) for t in (half, thr_u, thr_v)]
        stacked = bb.normalize(relax.op.concat([relax.op.expand_dims(mk, 0) for mk in masks], axis=0))
        pv = bb.normalize(relax.op.matmul(stacked, relax.op.expand_dims(vh, 0)))
        pw = bb.normalize(relax.op.multiply(pv, relax.op.reshape(w3, [3, 1, 1, 1, 1])))
        pa = bb.normalize(relax.op.sum(pw, axis=[0], keepdims=False))
        pt = bb.normalize(relax.op.permute_dims(pa, [0, 2, 1, 3]))
        return relax.op.reshape(pt, [b, n, c])


#: op_type -> converter class; ``cls.bind(ctx)`` is what the importer puts in TVM's convert map.
CONVERTERS: dict[str, type[_BhvitConverter]] = {
    c.op: c
    for c in (BinaryLinear, BinaryExpandPack, PackedBinaryLinear, BinaryConv2d, BinaryAttentionScores,
              QDAttentionContext, GSBAttentionContext)
}
