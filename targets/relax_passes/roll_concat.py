"""``concat([x[b:], x[:b]], axis)`` (a circular roll, as ``torch.roll`` exports) as one indexed read.

BHViT's token shifts (spec "Shift" and the channel mixes) roll the image by 1 or 2 rows or columns,
which the exporter writes as two slices and a concat. Legalised, the concat is one ``if_then_else``
per element, which :func:`bhvit_export.targets.schedules.cpu.common.inline_spatial` must keep as its own pass over
memory (a lane-dependent condition scalarises the vector loop): Tiny's first stage materialised
about twenty 56x56x64 rolled copies per block, each its own parallel loop. A read at
``(i + b) mod H`` gets the same elements with no condition: the index is per row or column, the
channels stay a contiguous vector, and the roll inlines into its consumer.
Exact (it moves values, no arithmetic).

The roll is a PrimFunc of its own (``out[.., i, ..] = x[.., (i + b) mod n, ..]``) marked
injective: Relax's ``take`` or a legalised gather is classified opaque by TVM's op-pattern
analysis (an indirect or non-affine read), and an opaque function is never fused, so each roll
would stay a separate call.
"""

from __future__ import annotations

from typing import Callable, Optional

import tvm
from tvm import relax, te, tirx

from .common import concat_parts, int_tuple, op_name, rebuild_block, rewrite_functions, static_shape


def _slice_of(value: Optional[relax.Expr], axis: int, rank: int) -> Optional[tuple[relax.Expr, int, int]]:
    """``(x, begin, end)`` if ``value`` is a unit-stride ``strided_slice`` of ``x`` along ``axis`` only."""
    if value is None or op_name(value) != "relax.strided_slice":
        return None
    x = value.args[0]
    axes, begin, end = (int_tuple(a) for a in value.args[1:4])
    strides = int_tuple(value.args[4]) if len(value.args) > 4 else [1]
    if axes is None or begin is None or end is None or strides is None or len(axes) != 1:
        return None
    if axes[0] % rank != axis or any(s != 1 for s in strides):
        return None
    return x, begin[0], end[0]


#: TIR op pattern kInjective: FuseOps may fuse the roll into its consumer.
_INJECTIVE = 2

RollFunc = Callable[[list[int], str, int, int], tvm.ir.GlobalVar]


def make_roll(shape: list[int], dtype: str, axis: int, begin: int) -> tirx.PrimFunc:
    """``out[.., i, ..] = x[.., (i + begin) mod n, ..]`` along ``axis``, marked injective."""
    dims = [tirx.IntImm("int64", d) for d in shape]  # int64, like legalised ops: FuseTIR matches buffers
    x = te.placeholder(dims, dtype, name="x")
    n = dims[axis]

    def read(*idx: tirx.Var) -> tirx.PrimExpr:
        src = list(idx)
        src[axis] = tirx.floormod(idx[axis] + tirx.IntImm("int64", begin), n)
        return x[tuple(src)]

    out = te.compute(dims, read, name="T_roll")
    return te.create_prim_func([x, out]).without_attr("global_symbol").with_attr("op_pattern", _INJECTIVE)


def _rewrite_block(block: relax.BindingBlock, roll: RollFunc) -> relax.BindingBlock:
    bindings: list = []
    bound: dict[relax.Var, relax.Expr] = {}
    for binding in block.bindings:
        value = binding.value if isinstance(binding, relax.VarBinding) else None
        if value is not None:
            bound[binding.var] = value
        parts = concat_parts(value)
        if parts is not None:
            fields, axis = parts
            out_shape = static_shape(binding.var)
            if len(fields) == 2 and out_shape is not None:
                rank = len(out_shape)
                axis %= rank
                first = _slice_of(bound.get(fields[0]), axis, rank)
                second = _slice_of(bound.get(fields[1]), axis, rank)
                src_shape = static_shape(first[0]) if first is not None else None
                if first is not None and second is not None and first[0].same_as(second[0]) and src_shape == out_shape:
                    n, b = out_shape[axis], first[1] % out_shape[axis]
                    if first[1:] == (b, n) and second[1:] == (0, b):
                        gv = roll(out_shape, binding.var.ty.dtype, axis, b)
                        call = relax.call_tir(gv, [first[0]], relax.TensorType(out_shape, binding.var.ty.dtype))
                        call = relax.BlockBuilder().normalize(call)  # typed now, not later: see _pass
                        bindings.append(relax.VarBinding(binding.var, call))
                        continue
        bindings.append(binding)
    return rebuild_block(block, bindings)


def roll_concat() -> tvm.transform.Pass:
    """Module pass: every two-slice circular roll becomes a call of an injective roll PrimFunc."""

    @tvm.transform.module_pass(opt_level=0, name="BhvitRollConcat")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)  # adds the roll PrimFuncs, with their types, to mod
        funcs: dict[tuple, tvm.ir.GlobalVar] = {}

        def roll(shape: list[int], dtype: str, axis: int, begin: int) -> tvm.ir.GlobalVar:
            key = (tuple(shape), dtype, axis, begin)
            if key not in funcs:
                name = f"roll_{'x'.join(map(str, shape))}_a{axis}_b{begin}"
                funcs[key] = builder.add_func(make_roll(shape, dtype, axis, begin), name)
            return funcs[key]

        rewritten = rewrite_functions(mod, lambda block: _rewrite_block(block, roll))
        # A new module (not the builder's own), holding only normalised (typed) expressions: a later
        # pass's BlockBuilder keys its function de-duplication on structural hashes, which an
        # untyped call would change once normalised, failing its UpdateFunction.
        funcs_out = dict(builder.get().functions_items())
        funcs_out.update((gv, f) for gv, f in rewritten.functions_items() if isinstance(f, relax.Function))
        return tvm.IRModule(funcs_out, attrs=mod.attrs)

    return _pass
