"""``erf`` as TVM's rational approximation (``topi.fast_erf``), which vectorises.

LLVM has no vector ``erf``: legalised as ``T.erf``, the stem's exact GELU is one scalar libm call
per element (Tiny: 200k calls, about 2.5 ms, the slowest float kernel). ``topi.fast_erf`` is the
float32 rational approximation from Eigen, accurate to a few ulp on the whole range (it clamps
to +-4, where erf is +-1 in float32), made of multiplies and adds only. Only ``erf`` is replaced:
TVM's ``FastMathTransform`` would also swap softmax's ``exp``, whose output feeds the attention
context's level thresholds, where a last-bit change can move a level.

On NEON targets the rational's divide becomes Newton reciprocal steps
(:mod:`bhvit_export.targets.kernels.erf_reciprocal`): the A72's vector ``fdiv`` issues once per 34
cycles. x86 keeps ``topi.fast_erf`` as it was.
"""

from __future__ import annotations

import tvm
from tvm import topi

from .common import replace_ops


def _on_neon() -> bool:
    """Whether the target being built (``Target.current()``; the host outside a scope) is NEON."""
    from bhvit_export.targets.arch import arch_of
    from bhvit_export.targets.kernels.target_info import host_target

    target = tvm.target.Target.current(allow_none=True)
    return arch_of(target if target is not None else host_target()).name == "neon"


def fast_erf() -> tvm.transform.Pass:
    """Module pass: every Relax ``erf`` becomes a ``call_tir`` of ``topi.fast_erf`` (on NEON, its
    divide-free form)."""

    def rewrite(bb, call):  # noqa: ANN001, ANN202
        from bhvit_export.targets.kernels.erf_reciprocal import fast_erf_reciprocal

        fn = fast_erf_reciprocal if _on_neon() else topi.fast_erf
        return bb.call_te(fn, call.args[0], primfunc_name_hint="fast_erf")

    return replace_ops("BhvitFastErf", {"relax.erf": rewrite})
