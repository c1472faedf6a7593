"""Relax converters for the four ``bhvit`` ops (``docs/packing.md``, semantics: ``passes/ops.py``).

TVM's Relax ONNX importer dispatches on ``op_type`` alone and never reads model-local functions,
so :mod:`targets.importer` registers the classes in :data:`CONVERTERS` for the duration of one
import (and checks that every such node really is in the ``bhvit`` domain before converting).

Lowering choices (correctness first; every path is exact against the ONNX function bodies):

* ``BinaryLinear`` -> two ``call_tir`` kernels from :mod:`targets.kernels`: the sign-pack with the
  shift fused (``pack``), then the XNOR/popcount GEMM with the ``scale``/``bias`` epilogue
  (``bgemm``). Both are pre-scheduled for the target and marked opaque + scheduled so the Relax
  pipeline (FuseOps/FuseTIR, dlight) leaves them alone. ``packed=False`` in :func:`converters`
  selects an all-Relax version instead (+-1 weights decoded once at import, float matmul).
* ``BinaryConv2d``: ``where(x + shift < 0, -1, 1)`` then a float ``conv2d`` with the +-1 weights
  decoded once at import time (zero padding happens after the sign, as the spec says), then
  ``* scale + bias`` per output channel.
* ``BinaryAttentionScores`` / ``QDAttentionContext``: the function bodies transcribed to Relax ops.

All products are of +-1 (or 0..3 levels) values in float32, so every partial sum is an integer
below 2^24 and the float path is bit-exact with the packed popcount arithmetic.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tvm
from tvm import relax

from bhvit_export.errors import TargetError
from passes.ops import unpack_bits

#: TIR op-pattern kOpaque: FuseOps never fuses an opaque PrimFunc with its neighbours.
_OPAQUE = 8


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


class _Options:
    """Import-wide options, set by :func:`converters` for one import."""

    target: Optional[tvm.target.Target] = None
    packed: bool = True


def _mark_kernel(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Keep a pre-scheduled kernel intact through the Relax pipeline."""
    return func.with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)


_KERNEL_CACHE: dict[tuple, tvm.tirx.PrimFunc] = {}


def _kernel(kind: str, *shape: int) -> tvm.tirx.PrimFunc:
    """Scheduled pack/bgemm PrimFunc for one static shape on the import's target (memoised)."""
    target = _Options.target
    key = (kind, shape, str(target))
    if key not in _KERNEL_CACHE:
        from targets.kernels import bgemm, pack

        if kind == "pack":
            mod = pack.pack_module(*shape, target, shift=True)
        else:
            mod = bgemm.bgemm_module(*shape, target)
        func = mod["main"]
        attrs = dict(func.attrs) if func.attrs is not None else {}
        func = func.without_attr("global_symbol") if "global_symbol" in attrs else func
        _KERNEL_CACHE[key] = _mark_kernel(func)
    return _KERNEL_CACHE[key]


class _BhvitConverter:
    """The importer asks each converter class for the ``_impl_vN`` of an opset; the bhvit domain has one."""

    @classmethod
    def get_converter(cls, opset: int):  # noqa: ARG003 - one version of the bhvit domain
        return cls._impl_v1  # type: ignore[attr-defined]


class BinaryLinear(_BhvitConverter):
    """``(K - 2 popc(pack(x + shift) ^ w)) * scale + bias`` over the last axis."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: ARG003
        what = f"BinaryLinear {_name(attr, 'BinaryLinear')}"
        x, shift, w_bits, scale, bias = (inputs[i] for i in range(5))
        xshape = _shape(x, f"{what}: x")
        k = int(attr.get("in_features", xshape[-1]))
        if xshape[-1] != k:
            raise TargetError(f"{what}: x has {xshape[-1]} features, in_features is {k}")
        n = _shape(w_bits, f"{what}: w_bits")[0]
        m = int(np.prod(xshape[:-1], dtype=np.int64))
        out_shape = xshape[:-1] + [n]
        if not _Options.packed:
            w_pm = _decode_weights(w_bits, k, what)
            a = _sign(bb, x, shift)
            d = bb.normalize(relax.op.matmul(a, relax.const(np.ascontiguousarray(w_pm.T))))
            return relax.op.add(relax.op.multiply(d, scale), bias)
        if _shape(shift, f"{what}: shift") != [k] or _shape(scale, f"{what}: scale") != [n] or _shape(
            bias, f"{what}: bias"
        ) != [n] or x.ty.dtype != "float32":
            raise TargetError(f"{what}: expected float32 x, shift [{k}], scale/bias [{n}]")
        kw = -(-k // 64)
        x2 = bb.normalize(relax.op.reshape(x, [m, k])) if len(xshape) != 2 else x
        pack_gv = bb.add_func(_kernel("pack", m, k), f"bhvit_pack_{m}x{k}")
        a_bits = bb.emit(
            relax.call_tir(pack_gv, [x2, shift], relax.TensorType([m, kw], "uint64"))
        )
        gemm_gv = bb.add_func(_kernel("bgemm", m, n, k), f"bhvit_bgemm_{m}x{n}x{k}")
        y = bb.emit(
            relax.call_tir(
                gemm_gv, [a_bits, w_bits, scale, bias], relax.TensorType([m, n], "float32")
            )
        )
        return relax.op.reshape(y, out_shape) if len(xshape) != 2 else y


class BinaryConv2d(_BhvitConverter):
    """Conv of ``sign(x + shift)`` (zero padding after the sign) with +-1 weights, ``* scale + bias``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: ARG003
        what = f"BinaryConv2d {_name(attr, 'BinaryConv2d')}"
        x, shift, w_bits, scale, bias = (inputs[i] for i in range(5))
        b, c, _, _ = _shape(x, f"{what}: x")
        kh, kw = (int(v) for v in attr["kernel_shape"])
        group = int(attr.get("group", 1))
        if c % group:
            raise TargetError(f"{what}: {c} channels do not split into {group} groups")
        k = int(attr.get("in_features", (c // group) * kh * kw))
        if k != (c // group) * kh * kw:
            raise TargetError(f"{what}: in_features={k} != C/g*kh*kw = {(c // group) * kh * kw}")
        w_pm = _decode_weights(w_bits, k, what)
        o = w_pm.shape[0]
        w4 = w_pm.reshape(o, c // group, kh, kw)
        pads = [int(p) for p in attr.get("pads", (0, 0, 0, 0))]
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


def _heads(bb, t: relax.Expr, b: int, n: int, h: int, perm: list[int]) -> relax.Expr:
    """``[B, N, C] -> Transpose(perm)([B, N, h, C/h])``."""
    r = bb.normalize(relax.op.reshape(t, [b, n, h, -1]))
    return bb.normalize(relax.op.permute_dims(r, perm))


class BinaryAttentionScores(_BhvitConverter):
    """``(sign(q+qs)_h . sign(k+ks)_h) / scale`` per head: ``[B, h, N, N]``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: ARG003
        what = f"BinaryAttentionScores {_name(attr, 'BinaryAttentionScores')}"
        q, k, q_shift, k_shift = (inputs[i] for i in range(4))
        b, n, c = _shape(q, f"{what}: q")
        h = int(attr["num_heads"])
        if c % h:
            raise TargetError(f"{what}: {c} channels do not split into {h} heads")
        scale = float(attr.get("scale", float(np.sqrt(c // h))))
        qh = _heads(bb, _sign(bb, q, q_shift), b, n, h, [0, 2, 1, 3])
        kt = _heads(bb, _sign(bb, k, k_shift), b, n, h, [0, 2, 3, 1])
        dot = bb.normalize(relax.op.matmul(qh, kt))
        return relax.op.divide(dot, relax.const(scale, "float32"))


class QDAttentionContext(_BhvitConverter):
    """Per head ``alpha_h * sum_j (p >= t_hj) @ sign(v + vs)_h``, heads merged: ``[B, N, C]``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):  # noqa: ARG003
        what = f"QDAttentionContext {_name(attr, 'QDAttentionContext')}"
        p, v, v_shift, thresholds, alpha = (inputs[i] for i in range(5))
        b, n, c = _shape(v, f"{what}: v")
        h = int(attr.get("num_heads", _shape(alpha, f"{what}: alpha")[0]))
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


#: op_type -> converter class (classes follow the importer's OnnxOpConverter protocol).
CONVERTERS: dict[str, type] = {
    "BinaryLinear": BinaryLinear,
    "BinaryConv2d": BinaryConv2d,
    "BinaryAttentionScores": BinaryAttentionScores,
    "QDAttentionContext": QDAttentionContext,
}
