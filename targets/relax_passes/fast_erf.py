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
from tvm import topi

from .common import replace_ops


def fast_erf() -> tvm.transform.Pass:
    """Module pass: every Relax ``erf`` becomes a ``call_tir`` of ``topi.fast_erf``."""
    return replace_ops(
        "BhvitFastErf",
        {"relax.erf": lambda bb, call: bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="fast_erf")},
    )
