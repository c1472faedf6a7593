"""``erf`` as TVM's rational approximation (``topi.fast_erf``), which vectorises.

LLVM has no vector ``erf``: legalised as ``T.erf``, the stem's exact GELU is one scalar libm call
per element (Tiny: 200k calls, about 2.5 ms, the slowest float kernel). ``topi.fast_erf`` is the
float32 rational approximation from Eigen, accurate to a few ulp on the whole range (it clamps
to +-4, where erf is +-1 in float32), made of multiplies and adds only. Only ``erf`` is replaced:
TVM's ``FastMathTransform`` would also swap softmax's ``exp``, whose output feeds the attention
context's level thresholds, where a last-bit change can move a level.
"""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _FastErf(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - the module docstring
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.erf":
            return self.builder_.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="fast_erf")
        return call


def fast_erf() -> tvm.transform.Pass:
    """Module pass: every Relax ``erf`` becomes a ``call_tir`` of ``topi.fast_erf``."""

    @tvm.transform.module_pass(opt_level=0, name="BhvitFastErf")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _FastErf(mod)
        new = {gv: rewriter.visit_expr(f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
        out = rewriter.builder_.get()  # mod plus the fast_erf PrimFuncs
        for gv, func in new.items():
            out[gv] = func
        return out

    return _pass
