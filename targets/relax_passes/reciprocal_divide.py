"""``x / c`` by a constant ``c`` as ``x * (1 / c)``: a multiply instead of a divide per element.

The token shifts' channel mixing divides its sums by constant counts (``divide`` by a tensor
constant in the ONNX graph). A vector float divide is slow and unpipelined on most cores
(Cortex-A72 ``fdiv .4s``: ~20+ cycles for 4 lanes, against a multiply per cycle), and LLVM keeps it
without fast-math: the ARM estimate (``bench --arm``) showed the divides as most of the cycles of
Tiny's stage-1 shift functions. The reciprocal is computed once, in float64, then rounded to
float32: ``x * rcp(c)`` differs from ``x / c`` by at most one more rounding (2^-23 relative), far
inside the spec's end-to-end tolerance, and never in sign (so a later sign-pack cannot flip).
Constants with a zero, an infinity or a NaN are left alone.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .common import const_array, replace_ops


def _rewrite(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    c = const_array(call.args[1])
    if c is None or c.dtype != np.float32 or not np.all(np.isfinite(c)) or np.any(c == 0):
        return call
    rcp = (1.0 / c.astype(np.float64)).astype(np.float32)
    return relax.op.multiply(call.args[0], relax.const(rcp, "float32"))


def reciprocal_divide() -> tvm.transform.Pass:
    """Module pass: every ``divide`` by a finite, non-zero float32 constant becomes a multiply."""
    return replace_ops("BhvitReciprocalDivide", {"relax.divide": _rewrite})
