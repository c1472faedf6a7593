"""Compute the model's image-layout islands channel-last (the token layout), not channel-first.

BHViT keeps activations as tokens ``(B, N, C)`` and goes to an image ``(B, C, H, W)`` only for
the token shift (slices + concats of rolls, adds, ``/ 3``), the GC mixer (pooling, windows,
resize) and the downsampling: ``image(t) = reshape(permute_dims(t, [0, 2, 1]), (B, C, H, W))``
and back with ``tokens(x) = permute_dims(reshape(x, (B, C, H*W)), [0, 2, 1])``. Legalised as
written, every ``image``/``tokens`` pair is a transpose, and the fused kernels between them read
channel-first tensors in token order: stride-``H*W`` gathers in the vector loop (they were most
of Tiny's float time).

A channel-first value ``v`` of shape ``(B, C, *S)`` is ``permute_dims(u, [0, r-1, 1, ..., r-2])``
of a channel-last ``u`` of shape ``(B, *S, C)``; ``image(t)`` is such a ``v`` with
``u = reshape(t, (B, H, W, C))``. This pass gives every channel-first value it can derive from a
channel-last one through layout-transparent ops a channel-last *twin* (same numbers), and rewrites
each ``permute_dims`` of a value with a twin as one permutation of the twin: ``tokens(x)`` becomes
a reshape of the twin, with no transpose. The original bindings stay for consumers the pass does
not understand (a binary convolution kernel); ``DeadCodeElimination`` drops those nobody uses any
more. Exact: only data movement changes (patch convolutions: see :mod:`.patch_conv`).

Layout-transparent ops: ``reshape`` of the spatial axes (``B`` and ``C`` kept), ``strided_slice``
and ``concat`` (axes remapped; equal channel pieces stacked on an outer axis), elementwise ``add``/``subtract``/``multiply``/``divide`` whose
other operand has a twin or is a scalar or a constant (transposed here), ``nn.prelu`` on the
channel axis, ``max_pool2d``/``avg_pool2d``/``image.resize2d`` (their NHWC layout), and patch
``conv2d``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tvm
from tvm import relax

from .common import Emitter, const_array, int_tuple, op_name, rewrite_functions, static_shape
from .patch_conv import patch_conv_nhwc, patch_geometry

_BINARY = {
    "relax.add": relax.op.add,
    "relax.subtract": relax.op.subtract,
    "relax.multiply": relax.op.multiply,
    "relax.divide": relax.op.divide,
}
_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


def to_last(axis: int, rank: int) -> int:
    """Where channel-first axis ``axis`` sits in the channel-last twin."""
    axis %= rank
    return 0 if axis == 0 else rank - 1 if axis == 1 else axis - 1


def first_to_last_perm(rank: int) -> list[int]:
    """``v = permute_dims(u, P)`` for a channel-first ``v`` and its channel-last twin ``u``."""
    return [0, rank - 1] + list(range(1, rank - 1))


class _Twins:
    """The channel-last twins of one binding block and the rules that extend them."""

    def __init__(self, emit: Emitter, patch_convs: bool) -> None:
        self.emit = emit
        self.patch_convs = patch_convs
        #: channel-first var (B, C, *S) -> channel-last expr (B, *S, C), same numbers.
        self.last: dict[relax.Var, relax.Expr] = {}
        #: var -> its value (reshape chains, constants behind a reshape).
        self.defs: dict[relax.Var, relax.Expr] = {}

    # --- helpers -------------------------------------------------------------------------------

    def _source(self, x: relax.Expr) -> relax.Expr:
        """``x`` with a reshape in front of it looked through (reshapes compose)."""
        src = self.defs.get(x) if isinstance(x, relax.Var) else None
        return src.args[0] if src is not None and op_name(src) == "relax.reshape" else x

    def reshape(self, x: relax.Expr, shape: list[int]) -> relax.Expr:
        """``reshape(x, shape)`` with ``reshape(reshape(y))`` folded and no-op reshapes dropped."""
        x = self._source(x)
        if static_shape(x) == list(shape):
            return x
        return self.emit(relax.op.reshape(x, shape))

    def permute(self, x: relax.Expr, axes: list[int]) -> relax.Expr:
        if axes == list(range(len(axes))):
            return x
        return self.emit(relax.op.permute_dims(x, axes))

    def _constant(self, x: relax.Expr) -> Optional[np.ndarray]:
        arr = const_array(x)
        if arr is None and isinstance(x, relax.Var):
            src = self.defs.get(x)
            if src is not None and op_name(src) == "relax.reshape":
                inner, shape = const_array(src.args[0]), static_shape(x)
                if inner is not None and shape is not None:
                    arr = inner.reshape(shape)
        return arr

    def _operand(self, x: relax.Expr, rank: int) -> Optional[relax.Expr]:
        """Channel-last form of one elementwise operand of a rank-``rank`` result, or ``None``."""
        if isinstance(x, relax.Var) and x in self.last:
            shape = static_shape(x)
            # Broadcasting aligns trailing axes: only a twin of the result's rank lines up.
            return self.last[x] if shape is not None and len(shape) == rank else None
        arr = self._constant(x)
        if arr is None:
            return None
        if arr.size == 1:
            return relax.const(arr.reshape(()), str(arr.dtype))
        if arr.ndim == rank:
            perm = [0] + list(range(2, rank)) + [1]
            return relax.const(np.ascontiguousarray(arr.transpose(perm)), str(arr.dtype))
        return None

    # --- the rules ----------------------------------------------------------------------------

    def visit(self, var: relax.Var, value: relax.Expr) -> relax.Expr:
        """The value to bind ``var`` to; records ``var``'s channel-last twin where it has one."""
        self.defs[var] = value
        name = op_name(value)
        out_shape = static_shape(var)
        if name is None or out_shape is None:
            return value
        rank = len(out_shape)
        args = value.args
        src = args[0] if args else None
        if name == "relax.permute_dims":
            axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else None
            if axes is None:
                return value
            if src in self.last:
                # v = permute(u, P) -> permute(v, axes) = permute(u, P[axes]): one permutation.
                p = first_to_last_perm(rank)
                return self.permute(self.last[src], [p[a] for a in axes])
            if rank >= 3 and axes[0] == 0 and axes[1] == rank - 1:
                self.last[var] = self.permute(src, [0] + axes[2:] + [rank - 1])
            return value
        if name == "relax.reshape":
            in_shape = static_shape(src)
            if src in self.last and in_shape is not None and rank >= 3:
                if out_shape[:2] == in_shape[:2]:
                    self.last[var] = self.reshape(self.last[src], [out_shape[0], *out_shape[2:], out_shape[1]])
            return value
        if rank < 3:
            return value
        if name == "relax.nn.conv2d" and self.patch_convs and patch_geometry(value) is not None:
            self.last[var] = patch_conv_nhwc(self.emit, value, self.last.get(src))
            return relax.op.permute_dims(self.last[var], first_to_last_perm(rank))
        if name == "relax.strided_slice" and src in self.last:
            axes, begin, end = (int_tuple(a) for a in args[1:4])
            strides = int_tuple(args[4]) if len(args) > 4 else None
            if axes is not None and begin is not None and end is not None:
                self.last[var] = self.emit(
                    relax.op.strided_slice(
                        self.last[src],
                        axes=[to_last(a, rank) for a in axes],
                        begin=begin,
                        end=end,
                        strides=strides,
                        assume_inbound=bool(value.attrs.assume_inbound),
                    )
                )
        elif name == "relax.concat":
            fields = list(src.fields) if isinstance(src, relax.Tuple) else None
            if fields and all(isinstance(f, relax.Var) and f in self.last for f in fields):
                self.last[var] = self._concat([self.last[f] for f in fields], to_last(int(value.attrs.axis), rank))
        elif name in _BINARY:
            ops = [self._operand(a, rank) for a in args]
            if all(o is not None for o in ops) and any(isinstance(a, relax.Var) and a in self.last for a in args):
                self.last[var] = self.emit(_BINARY[name](*ops))
        elif name == "relax.nn.prelu" and src in self.last and int(value.attrs.axis) % rank == 1:
            self.last[var] = self.emit(relax.op.nn.prelu(self.last[src], args[1], axis=rank - 1))
        elif name in _POOLS and src in self.last and rank == 4 and str(value.attrs.layout) == "NCHW":
            self._pool(var, value, name)
        elif name == "relax.image.resize2d" and src in self.last and rank == 4 and str(value.attrs.layout) == "NCHW":
            a = value.attrs
            self.last[var] = self.emit(
                relax.op.image.resize2d(
                    self.last[src],
                    args[1],
                    roi=[float(r) for r in a.roi],
                    layout="NHWC",
                    method=str(a.method),
                    coordinate_transformation_mode=str(a.coordinate_transformation_mode),
                    rounding_method=str(a.rounding_method),
                    cubic_alpha=float(a.cubic_alpha),
                    cubic_exclude=int(a.cubic_exclude),
                    extrapolation_value=float(a.extrapolation_value),
                    out_dtype=a.out_dtype,
                )
            )
        return value

    def _concat(self, fields: list[relax.Expr], axis: int) -> relax.Expr:
        """Concat of channel-last values; equal pieces of the channel axis (the channel mix) are
        stacked on a new axis in front of it and merged by a reshape: legalised, the concat's
        ``if_then_else`` then tests that outer axis, not the vector lane (which scalarises)."""
        shapes = [static_shape(f) for f in fields]
        rank = len(shapes[0]) if shapes[0] is not None else 0
        last = rank - 1
        if axis != last or any(sh is None or sh != shapes[0] for sh in shapes) or shapes[0][last] < 2:
            return self.emit(relax.op.concat(fields, axis=axis))
        stacked = self.emit(relax.op.concat([self.emit(relax.op.expand_dims(f, last)) for f in fields], axis=last))
        return self.reshape(stacked, [*shapes[0][:last], len(fields) * shapes[0][last]])

    def _pool(self, var: relax.Var, value: relax.Call, name: str) -> None:
        a = value.attrs
        kwargs = dict(
            pool_size=[int(x) for x in a.pool_size],
            strides=[int(x) for x in a.strides],
            padding=[int(x) for x in a.padding],
            dilation=[int(x) for x in a.dilation],
            ceil_mode=bool(a.ceil_mode),
            layout="NHWC",
        )
        if hasattr(a, "count_include_pad"):
            kwargs["count_include_pad"] = bool(a.count_include_pad)
        self.last[var] = self.emit(_POOLS[name](self.last[value.args[0]], **kwargs))


def _rewrite_block(block: relax.BindingBlock, patch_convs: bool) -> relax.BindingBlock:
    dataflow = isinstance(block, relax.DataflowBlock)
    bindings: list = []
    twins = _Twins(Emitter(bindings, dataflow, "cl"), patch_convs)
    for binding in block.bindings:
        if not isinstance(binding, relax.VarBinding):
            bindings.append(binding)
            continue
        value = twins.visit(binding.var, binding.value)
        bindings.append(relax.VarBinding(binding.var, value))
    return relax.DataflowBlock(bindings) if dataflow else relax.BindingBlock(bindings)


def token_layout(patch_convs: bool = True) -> tvm.transform.Pass:
    """Module pass: channel-last twins for image-layout islands (module docstring), then binding
    and dead-code clean-up so the replaced channel-first values and transposes are gone.

    ``patch_convs``: also rewrite patch convolutions (:mod:`.patch_conv`) with NHWC outputs.
    """

    @tvm.transform.module_pass(opt_level=0, name="BhvitTokenLayout")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = rewrite_functions(mod, lambda block: _rewrite_block(block, patch_convs))
        return tvm.transform.Sequential(
            [relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]
        )(mod)

    return _pass
