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
from tvm import topi

from .common import replace_ops


def fast_softmax() -> tvm.transform.Pass:
    """Module pass: every Relax ``nn.softmax`` becomes a ``call_tir`` of ``topi.nn.fast_softmax``."""
    return replace_ops(
        "BhvitFastSoftmax",
        {
            "relax.nn.softmax": lambda bb, call: bb.call_te(
                topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="fast_softmax"
            )
        },
    )
