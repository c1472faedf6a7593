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

from bhvit_export.targets.arch import NEON_POPCOUNT_GEMM, cpu_variant

from . import neon_gemm
from .popcount_gemm import OUT_BLOCK, acc_dtype_for, popcount_gemm_stages, schedule_popcount_gemm
from .target_info import TargetLike

OutDType = Literal["float32", "int32"]


def make_bgemm(
    m: int, n: int, k: int, *, out_dtype: OutDType = "float32", acc_dtype: str = "uint64"
) -> tirx.PrimFunc:
    """Unscheduled PrimFunc for static shapes.

    Arguments: ``(a_bits [M,Kw] u64, w_bits [N,Kw] u64, [scale [N] f32, bias [N] f32,] out [M,N])``;
    scale and bias are present only for ``out_dtype="float32"``. ``acc_dtype``: the popcount
    accumulator (``popcount_gemm.acc_dtype_for``: int32 on CUDA).
    """
    a, w, acc = popcount_gemm_stages(m, n, k, lambda x, y: x ^ y, acc_dtype=acc_dtype)

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


def make_bgemm_neon(
    m: int, n: int, k: int, *, out_dtype: OutDType = "float32", dotprod: bool = False, **tiles: int
) -> tirx.PrimFunc:
    """The same kernel (same arguments) as explicit NEON TIR: ``cnt`` + ``uadalp``/``udot`` loop.

    See :mod:`neon_gemm`; the epilogue gets 4 columns' popcounts as int32x4 and returns 4 outputs.
    """
    kk, two = tirx.const(k, "int32"), tirx.const(2, "int32")

    def epilogue(popc: tirx.Expr, cols: tirx.Expr, extra: dict) -> tirx.Expr:
        dot = kk - two * popc
        if out_dtype == "int32":
            return dot
        scale = tirx.BufferLoad(extra["scale"], [cols])
        bias = tirx.BufferLoad(extra["bias"], [cols])
        return dot.astype("float32x4") * scale + bias

    if out_dtype not in ("float32", "int32"):
        raise ValueError(f"out_dtype must be float32 or int32, got {out_dtype!r}")
    extra = [("scale", (n,), "float32"), ("bias", (n,), "float32")] if out_dtype == "float32" else []
    return neon_gemm.neon_popcount_gemm(
        m, n, k, combine="xor", out_dtype=out_dtype, epilogue=epilogue, extra_args=extra,
        tile=neon_gemm.NeonTile(**tiles), dotprod=dotprod,
    )


def make_bgemm_neon_folded(m: int, n: int, k: int, *, dotprod: bool = False, **tiles: int) -> tirx.PrimFunc:
    """NEON kernel ``(a_bits [M,Kw], w_t_bits [Kw,N], ns2 [N], kb [N], out [M,N] f32)`` with the
    affine folded at import (:func:`fold_affine`): ``out = popc * ns2 + kb``, one ``ucvtf`` and one
    ``fmla`` per 4 outputs where the unfolded epilogue takes ``shl``/``add``, ``sub``, ``scvtf`` and
    ``fmla`` (Cortex-A72 model, Tiny's 212 x 256 x 256 tile loop: 137 -> 128 cycles). The weights
    come transposed (``[Kw, N]``, once at import) instead of being transposed into a workspace on
    each call. Rounding: ``kb`` is ``K * scale + bias`` rounded once and the ``fmla`` rounds once,
    where the unfolded form rounds the product and the sum: within a few ulps of ``K |scale|``.
    """
    def epilogue(popc: tirx.Expr, cols: tirx.Expr, extra: dict) -> tirx.Expr:
        p = tirx.reinterpret("uint32x4", popc).astype("float32x4")  # ucvtf: exact (popc <= K < 2^24)
        return p * tirx.BufferLoad(extra["ns2"], [cols]) + tirx.BufferLoad(extra["kb"], [cols])

    return neon_gemm.neon_popcount_gemm(
        m, n, k, combine="xor", out_dtype="float32", epilogue=epilogue,
        extra_args=[("ns2", (n,), "float32"), ("kb", (n,), "float32")],
        tile=neon_gemm.NeonTile(**tiles), dotprod=dotprod, w_layout="kn",
    )


def fold_affine(scale: "np.ndarray", bias: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
    """``(ns2, kb)`` of :func:`make_bgemm_neon_folded`: ``-2 scale`` (exact) and ``K scale + bias``
    (float64, rounded once), float32."""
    import numpy as np

    s, b = np.asarray(scale, np.float64).reshape(-1), np.asarray(bias, np.float64).reshape(-1)
    return (-2.0 * s).astype(np.float32), (k * s + b).astype(np.float32)


def bgemm_folded_module(m: int, n: int, k: int, target: TargetLike) -> tvm.IRModule:
    """:func:`make_bgemm_neon_folded` as a module (aarch64 only; the lowering tables' ``bgemm_folded``)."""
    tiles = neon_gemm.arch_tile(target)
    return tvm.IRModule({"main": make_bgemm_neon_folded(m, n, k, dotprod=neon_gemm.has_dotprod(target), **tiles)})


def bgemm_module(
    m: int, n: int, k: int, target: TargetLike, *, out_dtype: OutDType = "float32", **tiles: int
) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel`.

    aarch64 targets get the explicit NEON kernel (:func:`make_bgemm_neon`, ``udot`` when the
    target has ``dotprod``) whenever N >= 4, its register tile from the architecture record
    (``targets/arch.py``) unless ``tiles`` says otherwise; everything else the TE compute + shared schedule.
    """
    if cpu_variant(target, NEON_POPCOUNT_GEMM) and neon_gemm.supports(n):
        tiles = tiles or neon_gemm.arch_tile(target)
        func = make_bgemm_neon(m, n, k, out_dtype=out_dtype, dotprod=neon_gemm.has_dotprod(target), **tiles)
        return tvm.IRModule({"main": func})
    return schedule_bgemm(make_bgemm(m, n, k, out_dtype=out_dtype, acc_dtype=acc_dtype_for(target)), target, **tiles)
