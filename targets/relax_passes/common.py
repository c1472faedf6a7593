"""Small helpers the Relax rewrites share: static shapes, op names, constants, new bindings."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tvm
from tvm import relax


#: TIR op pattern kOpaque: FuseOps leaves a pre-scheduled kernel alone.
OPAQUE = 8


def target_f32_lanes() -> int:
    """float32 lanes of the target being built (``Target.current()``; the host's outside a target
    scope): the vector width the pre-scheduled float kernels are written for."""
    from bhvit_export.targets.arch import arch_of
    from bhvit_export.targets.kernels.target_info import host_target

    target = tvm.target.Target.current(allow_none=True)
    return max(arch_of(target if target is not None else host_target()).f32_lanes, 2)


def static_shape(expr: relax.Expr) -> Optional[list[int]]:
    """The static shape of a tensor-typed expression, or ``None`` (symbolic / not a tensor)."""
    shape = getattr(expr.ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    try:
        return [int(s) for s in shape.values]
    except TypeError:
        return None


def op_name(expr: relax.Expr) -> Optional[str]:
    """``"relax.add"`` etc. for a call of a Relax operator, else ``None``."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def const_array(expr: relax.Expr) -> Optional[np.ndarray]:
    """The numpy value of a tensor constant, else ``None``."""
    if isinstance(expr, tvm.ir.GenericConst):
        value = expr.value
        if hasattr(value, "numpy"):
            return value.numpy()
    return None


def concat_parts(value: Optional[relax.Expr]) -> Optional[tuple[list[relax.Expr], int]]:
    """``(fields, axis)`` of a ``concat`` of a literal tuple, else ``None``."""
    if value is None or op_name(value) != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return None
    return list(value.args[0].fields), int(value.attrs.axis)


def int_tuple(expr: relax.Expr) -> Optional[list[int]]:
    """Python ints of a Relax tuple / shape of integer immediates (slice axes, begins, ...)."""
    fields = getattr(expr, "fields", None)
    if fields is None:
        fields = getattr(expr, "values", None)
    if fields is None:
        return None
    try:
        return [int(getattr(f, "value", f)) for f in fields]
    except (TypeError, ValueError):
        return None


class Emitter:
    """Appends new bindings (with inferred types) to a block being rebuilt.

    ``dataflow`` picks ``DataflowVar`` or ``Var``: a binding of a dataflow block must not leak a
    plain var and vice versa.
    """

    def __init__(self, bindings: list, dataflow: bool, prefix: str) -> None:
        self.bindings = bindings
        self.dataflow = dataflow
        self.prefix = prefix
        self.count = 0
        self._bb = relax.BlockBuilder()

    def __call__(self, expr: relax.Expr) -> relax.Var:
        expr = self._bb.normalize(expr)
        self.count += 1
        cls = relax.DataflowVar if self.dataflow else relax.Var
        var = cls(f"{self.prefix}{self.count}", expr.ty)
        self.bindings.append(relax.VarBinding(var, expr))
        return var


def rewrite_functions(
    mod: tvm.IRModule, rewrite_block: Callable[[relax.BindingBlock], relax.BindingBlock]
) -> tvm.IRModule:
    """Apply ``rewrite_block`` to every binding block of every Relax function of a copy of ``mod``
    (a module pass must leave its input alone: callers compare before and after)."""
    mod = mod.clone()
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        blocks = [rewrite_block(b) for b in func.body.blocks]
        body = relax.SeqExpr(blocks, func.body.body)
        updates[gv] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


OpRewrite = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]


def replace_ops(pass_name: str, rewrites: dict[str, OpRewrite]) -> tvm.transform.Pass:
    """Module pass: every call of a Relax operator named in ``rewrites`` becomes what its function
    returns (typically a ``call_te`` of a TOPI compute, whose PrimFunc the builder adds)."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewriter(PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - see replace_ops
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name in rewrites:
                return rewrites[call.op.name](self.builder_, call)
            return call

    @tvm.transform.module_pass(opt_level=0, name=pass_name)
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        new = {gv: rewriter.visit_expr(f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
        out = rewriter.builder_.get()  # mod plus the PrimFuncs the rewrites added
        for gv, func in new.items():
            out[gv] = func
        return out

    return _pass


def rebuild_block(block: relax.BindingBlock, bindings: list) -> relax.BindingBlock:
    """A block of the same kind (dataflow or not) as ``block`` with ``bindings``."""
    if isinstance(block, relax.DataflowBlock):
        return relax.DataflowBlock(bindings)
    return relax.BindingBlock(bindings)
