"""XNOR/popcount GEMM: the compute core of ``BinaryLinear``/``BinaryConv2d``.

``out[i, j] = (K - 2 * popc(a[i] ^ w[j])) * scale[j] + bias[j]`` over packed uint64 rows
(``docs/packing.md``). The int32 variant (no scale/bias) exists so tests can compare bit-exactly;
the float variant fuses the per-channel affine into the register tile, so the popcount
accumulators never go to memory.
"""

from __future__ import annotations

from typing import Literal

import tvm
from tvm import te, tirx

from .popcount_gemm import OUT_BLOCK, popcount_gemm_stages, schedule_popcount_gemm
from .target_info import TargetLike

OutDType = Literal["float32", "int32"]


def make_bgemm(m: int, n: int, k: int, *, out_dtype: OutDType = "float32") -> tirx.PrimFunc:
    """Unscheduled PrimFunc for static shapes.

    Arguments: ``(a_bits [M,Kw] u64, w_bits [N,Kw] u64, [scale [N] f32, bias [N] f32,] out [M,N])``;
    scale and bias are present only for ``out_dtype="float32"``.
    """
    a, w, acc = popcount_gemm_stages(m, n, k, lambda x, y: x ^ y)

    def dot(i: tirx.Var, j: tirx.Var) -> tirx.Expr:
        # popc <= K < 2^31, so the narrowing cast is exact.
        return tirx.const(k, "int32") - tirx.const(2, "int32") * acc[i, j].astype("int32")

    if out_dtype == "int32":
        out = te.compute((m, n), dot, name=OUT_BLOCK)
        return te.create_prim_func([a, w, out])
    if out_dtype != "float32":
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    scale = te.placeholder((n,), "float32", name="scale")
    bias = te.placeholder((n,), "float32", name="bias")
    out = te.compute(
        (m, n), lambda i, j: dot(i, j).astype("float32") * scale[j] + bias[j], name=OUT_BLOCK
    )
    return te.create_prim_func([a, w, scale, bias, out])


def schedule_bgemm(func: tirx.PrimFunc, target: TargetLike, **tiles: int) -> tvm.IRModule:
    """Target schedule (see :func:`popcount_gemm.schedule_popcount_gemm`; ``tiles``: mr/nr)."""
    return schedule_popcount_gemm(func, target, **tiles)


def bgemm_module(
    m: int, n: int, k: int, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel`."""
    return schedule_bgemm(make_bgemm(m, n, k, out_dtype=out_dtype), target, **tiles)
