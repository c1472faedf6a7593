"""AND/popcount GEMM: the mask x sign(v) core of ``QDAttentionContext``.

``out[i, j] = popc(m[i] & v[j])`` over packed uint64 rows. With ``v`` packed as ``v >= 0`` bits
(``vpos``), the QD context is ``2 * out - popc(m)`` per level (``docs/packing.md``); that affine
part is cheap and stays with the caller, so this kernel returns the exact int32 counts.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

from bhvit_export.targets.arch import NEON_POPCOUNT_GEMM, cpu_variant

from . import neon_gemm
from .popcount_gemm import OUT_BLOCK, acc_dtype_for, popcount_gemm_stages, schedule_popcount_gemm
from .target_info import TargetLike


def make_and_popcount(m: int, n: int, k: int, *, acc_dtype: str = "uint64") -> tirx.PrimFunc:
    """Unscheduled PrimFunc ``(m_bits [M,Kw] u64, v_bits [N,Kw] u64, out [M,N] i32)`` (``acc_dtype``
    as in :func:`bgemm.make_bgemm`)."""
    a, v, acc = popcount_gemm_stages(m, n, k, lambda x, y: x & y, acc_dtype=acc_dtype)
    out = te.compute((m, n), lambda i, j: acc[i, j].astype("int32"), name=OUT_BLOCK)
    return te.create_prim_func([a, v, out])


def schedule_and_popcount(func: tirx.PrimFunc, target: TargetLike, **tiles: int) -> tvm.IRModule:
    """Target schedule (shared with the XNOR GEMM; ``tiles``: mr/nr)."""
    return schedule_popcount_gemm(func, target, **tiles)


def make_and_popcount_neon(m: int, n: int, k: int, *, dotprod: bool = False, **tiles: int) -> tirx.PrimFunc:
    """The same kernel as explicit NEON TIR (``and`` + ``cnt`` + ``uadalp``/``udot``; :mod:`neon_gemm`)."""
    return neon_gemm.neon_popcount_gemm(
        m, n, k, combine="and", out_dtype="int32", epilogue=lambda popc, cols, extra: popc,
        tile=neon_gemm.NeonTile(**tiles), dotprod=dotprod,
    )


def and_popcount_module(m: int, n: int, k: int, target: TargetLike, **tiles: int) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel` (aarch64, N >= 4: the NEON kernel)."""
    if cpu_variant(target, NEON_POPCOUNT_GEMM) and neon_gemm.supports(n):
        tiles = tiles or neon_gemm.arch_tile(target)
        func = make_and_popcount_neon(m, n, k, dotprod=neon_gemm.has_dotprod(target), **tiles)
        return tvm.IRModule({"main": func})
    return schedule_and_popcount(make_and_popcount(m, n, k, acc_dtype=acc_dtype_for(target)), target, **tiles)
