"""``softmax`` with a vectorisable ``exp`` and no divide per element.

Legalised, Relax's softmax calls libm's scalar ``expf`` once per element: at BHViT-Tiny's attention
sizes that made it the slowest float kernel (1.2 ms of 18 at one thread). A softmax over the last
axis (the attention's, rows of 53 or 50) becomes a call of :func:`bhvit_export.targets.kernels.softmax.make_softmax`,
a pre-scheduled row kernel: TOPI's polynomial ``fast_exp`` over full vectors (the tail of a row
that is not a multiple of the vector width handled apart, instead of the ``where`` predicate that
scalarised TOPI's ``fast_softmax`` under dlight's schedule), and one reciprocal per row instead
of an ``fdiv`` per element. Other axes or symbolic shapes get ``topi.nn.fast_softmax``.

Accuracy: ``fast_exp`` is within 1e-6 relative (9 ulp measured on [-10, 0], the range after the
max subtraction that carries the probability mass) where libm's is within 1 ulp; ``e * (1/s)``
rounds once more than ``e / s``. The probabilities feed the QD context's level thresholds
(``p >= t``), so a probability within a few ulp of a threshold can land on the other side; so can
it already, between PyTorch's exp (Sleef), onnxruntime's (MLAS) and libm's. A flipped level
changes one of ``N`` terms of one context row by ``alpha``, well inside the end-to-end tolerance,
which the official fixtures test.
"""

from __future__ import annotations

import tvm
from tvm import relax, topi

from .common import OPAQUE, replace_ops, static_shape, target_f32_lanes



def _rewrite(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    from bhvit_export.targets.kernels.softmax import make_softmax

    x = call.args[0]
    shape = static_shape(x)
    axis = int(call.attrs.axis)
    if shape is None or str(x.ty.dtype) != "float32" or axis % len(shape) != len(shape) - 1:
        return bb.call_te(topi.nn.fast_softmax, x, axis, primfunc_name_hint="fast_softmax")
    func = make_softmax(tuple(shape), target_f32_lanes()).without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
    gv = bb.add_func(func, f"softmax_rows_{'x'.join(map(str, shape))}")
    return relax.call_tir(gv, [x], relax.TensorType(shape, "float32"))


def fast_softmax() -> tvm.transform.Pass:
    """Module pass: every Relax ``nn.softmax`` becomes a call of the row kernel (last axis, static
    shape) or of ``topi.nn.fast_softmax``."""
    return replace_ops("BhvitFastSoftmax", {"relax.nn.softmax": _rewrite})
