"""Eigen's float32 ``erf`` (TOPI's ``fast_erf``) with its one divide as Newton reciprocal steps.

``topi.fast_erf`` ends in ``p / q``. On the Cortex-A72 a ``float32x4`` ``fdiv`` issues once per
34 cycles (llvm-mca): the stem GELU's fused kernel (Tiny, 200k elements) spent 544 of its 967
cycles per 64 elements on the divider. ``q`` is Eigen's even denominator polynomial, negative
and bounded on the clamped input (``-q`` in [0.0142, 2.4]), so ``1 / -q`` has a cheap exact
enough form: the exponent-flip first guess ``0x7EF311C3 - bits(-q)`` (within 12.5%) and three
Newton steps ``r = r * (2 - (-q) * r)`` (error squared per step: 12.5% -> 1.6% -> 2.4e-4 -> 6e-8,
then float rounding), six multiply-adds that pipeline. The result is within a few float32 ulp
of ``p / q`` (``erf`` within 1e-6 absolute of TOPI's, as its tests require; measured on a dense
grid of [-6, 6]: 1.8e-7 absolute, 2.1e-7 relative). That fused kernel's loop body, llvm-mca on
the Cortex-A72: 967 -> 745 cycles (its remaining limit is the schedule's register spills).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # alpha_13 .. alpha_1
_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
         -1.42647390514189e-02)  # beta_8 .. beta_0
_MAGIC = 0x7EF311C3  # first guess of 1/y for y > 0: its exponent negated, its mantissa mirrored
NEWTON_STEPS = 3


def _f(v: float) -> tirx.PrimExpr:
    return tirx.const(float(np.float32(v)), "float32")


def erf_reciprocal_expr(arg: tirx.PrimExpr) -> tirx.PrimExpr:
    """``erf(arg)`` of a float32 expression: TOPI's polynomials, ``p * (1 / q)`` by Newton."""
    x = tirx.max(tirx.min(arg, _f(4.0)), _f(-4.0))
    x2 = x * x
    p = x2 * _f(_ALPHA[0]) + _f(_ALPHA[1])
    for c in _ALPHA[2:]:
        p = x2 * p + _f(c)
    p = x * p
    q = x2 * _f(_BETA[0]) + _f(_BETA[1])
    for c in _BETA[2:]:
        q = x2 * q + _f(c)
    y = tirx.const(0.0, "float32") - q  # > 0
    r = tirx.reinterpret("float32", tirx.const(_MAGIC, "int32") - tirx.reinterpret("int32", y))
    for _ in range(NEWTON_STEPS):
        r = r * (_f(2.0) - y * r)
    return tirx.const(0.0, "float32") - p * r


def fast_erf_reciprocal(data: te.Tensor) -> te.Tensor:
    """Elementwise :func:`erf_reciprocal_expr` of a float32 tensor (other dtypes: ``topi.fast_erf``)."""
    if data.dtype != "float32":
        from tvm import topi

        return topi.fast_erf(data)
    return te.compute(data.shape, lambda *i: erf_reciprocal_expr(data(*i)), name="T_fast_erf", tag="elemwise")


__all__ = ["NEWTON_STEPS", "erf_reciprocal_expr", "fast_erf_reciprocal"]
