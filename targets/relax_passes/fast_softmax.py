"""``softmax`` with a vectorisable ``exp`` (``topi.nn.fast_softmax``).

Legalised, Relax's softmax calls libm's scalar ``expf`` once per element: at BHViT-Tiny's attention
sizes that made it the slowest float kernel (1.2 ms of 18 at one thread). ``topi.nn.fast_softmax``
is the same max-subtract / exp / sum / divide with TVM's polynomial ``fast_exp`` (Cephes range
reduction, multiplies and adds only), which LLVM vectorises.

Accuracy: ``fast_exp`` is within 1e-6 relative (9 ulp measured on [-10, 0], the range after the
max subtraction that carries the probability mass) where libm's is within 1 ulp. The probabilities
feed the QD context's level thresholds (``p >= t``), so a probability within a few ulp of a
threshold can land on the other side; so can it already, between PyTorch's exp (Sleef), onnxruntime's
(MLAS) and libm's. A flipped level changes one of ``N`` terms of one context row by ``alpha``,
well inside the end-to-end tolerance, which the official fixtures test.
"""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _FastSoftmax(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - the module docstring
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.softmax":
            axis = int(call.attrs.axis)
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], axis, primfunc_name_hint="fast_softmax")
        return call


def fast_softmax() -> tvm.transform.Pass:
    """Module pass: every Relax ``nn.softmax`` becomes a ``call_tir`` of ``topi.nn.fast_softmax``."""

    @tvm.transform.module_pass(opt_level=0, name="BhvitFastSoftmax")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _FastSoftmax(mod)
        new = {gv: rewriter.visit_expr(f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
        out = rewriter.builder_.get()
        for gv, func in new.items():
            out[gv] = func
        return out

    return _pass
