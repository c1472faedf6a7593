"""Shared compute and schedule of the two popcount GEMMs (XNOR in ``bgemm``, AND in ``and_popcount``).

Both are ``out[i, j] = epilogue(sum_k popc(a[i, k] OP w[j, k]))`` over uint64 words; they differ only
in ``OP`` and the epilogue, so the register-tiled schedule lives here once.

Layout choice: the packed operands arrive row-major (``[M, Kw]`` and ``[N, Kw]``, as the ONNX op
stores weights). K is short in words (BHViT: 2..72), so vectorising along K wastes lanes and needs a
horizontal add. Instead the kernel first transposes ``w`` to ``w_t [Kw, N]`` (N*Kw words, negligible
next to M*N*Kw) and vectorises along N: one broadcast ``a`` word XORs a contiguous vector of ``w_t``,
feeding ``vpopcntq`` (AVX-512) / ``cnt`` (NEON) with no gathers. The accumulator tile
``[mr, nr]`` stays in registers (``local`` scope) and the epilogue runs on it in place.
"""

from __future__ import annotations

from typing import Callable, Optional

import tvm
from tvm import te, tirx

from .reference import num_words
from .target_info import TargetLike, u64_lanes

Combine = Callable[[tirx.Expr, tirx.Expr], tirx.Expr]

#: Block names the schedule relies on; kernels must name their epilogue stage ``OUT_BLOCK``.
TRANSPOSE_BLOCK = "w_t"
ACC_BLOCK = "popc"
OUT_BLOCK = "out"


def popcount_gemm_stages(
    m: int, n: int, k: int, combine: Combine, *, acc_dtype: str = "uint64"
) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    """Placeholders ``a [M,Kw]``, ``w [N,Kw]`` and the accumulator ``sum_k popc(combine)``.

    ``acc_dtype``: ``uint64`` on CPUs (``vpopcntq``/``cnt`` lanes stay 64-bit, no narrowing in the
    vector loop); ``int32`` on CUDA, where ``__popcll`` returns a 32-bit int and a 64-bit sum would
    cost two registers and an add-with-carry per step (see :func:`acc_dtype_for`).
    """
    if min(m, n, k) < 1:
        raise ValueError(f"popcount GEMM needs positive M, N, K; got {(m, n, k)}")
    kw = num_words(k)
    a = te.placeholder((m, kw), "uint64", name="a_bits")
    w = te.placeholder((n, kw), "uint64", name="w_bits")
    w_t = te.compute((kw, n), lambda r, j: w[j, r], name=TRANSPOSE_BLOCK)
    r = te.reduce_axis((0, kw), name="k")
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(popcount_as(combine(a[i, r], w_t[r, j]), acc_dtype), axis=r),
        name=ACC_BLOCK,
    )
    return a, w, acc


def popcount_as(word: tirx.Expr, acc_dtype: str) -> tirx.Expr:
    """``popc(word)`` (of a uint64 word) in the accumulator's type (exact: a count is at most 64)."""
    count = tirx.popcount(word)
    return count if acc_dtype == "uint64" else count.astype(acc_dtype)


def acc_dtype_for(target: TargetLike) -> str:
    """The popcount accumulator type for ``target``: 32-bit on CUDA, 64-bit lanes on CPUs."""
    from bhvit_export.targets.schedules.gpu.packed import is_cuda

    return "int32" if is_cuda(target) else "uint64"


def _largest_divisor(n: int, candidates: tuple[int, ...]) -> int:
    """First candidate dividing ``n`` (candidates sorted large to small, ending in 1)."""
    return next(c for c in candidates if n % c == 0)


def schedule_popcount_gemm(
    func: tirx.PrimFunc,
    target: TargetLike,
    *,
    mr: Optional[int] = None,
    nr: Optional[int] = None,
) -> tvm.IRModule:
    """Register-tiled, M-parallel schedule for the kernels built on :func:`popcount_gemm_stages`.

    ``mr`` rows (default: the architecture record's ``popcount_rows``) x ``nr`` columns of
    accumulators are kept in vector registers; ``nr`` defaults to
    two vectors of ``u64_lanes(target)`` (AVX-512: 16, AVX2: 8, NEON: 4), shrunk to a divisor of N
    so the vector loop never carries a per-lane tail predicate.
    Rows use ``mr`` with a predicate on the last tile: that keeps the vector body intact.
    CUDA targets get :func:`packed.schedule_popcount_gemm_gpu` (``mr``/``nr`` are CPU tiles).
    """
    from bhvit_export.targets.schedules.gpu.packed import is_cuda, schedule_popcount_gemm_gpu

    if is_cuda(target):
        return schedule_popcount_gemm_gpu(func, target)
    from bhvit_export.targets.arch import arch_of

    mr = mr if mr is not None else arch_of(target).popcount_rows
    lanes = u64_lanes(target)
    sch = tvm.s_tir.Schedule(func)
    acc = sch.get_sblock(ACC_BLOCK)
    out = sch.get_sblock(OUT_BLOCK)
    i, j, _ = sch.get_loops(acc)
    m = int(sch.get(i).extent)
    n = int(sch.get(j).extent)
    if nr is None:
        nr = _largest_divisor(n, (2 * lanes, lanes, lanes // 2, 2, 1))
    elif n % nr:
        raise ValueError(f"nr={nr} must divide N={n}")
    if nr == 1:
        # No vector-width divisor of N (N odd): the register tile degenerates to scalars, and the
        # local-scope tile miscompiled (wrong sums, heap corruption) for such shapes. Use the plain
        # row-parallel loop nest instead; BHViT's N are all multiples of 16.
        sch.parallel(i)
        sch.parallel(sch.get_loops(out)[0])
        return sch.mod
    mr = max(1, min(mr, m))

    io, ii = sch.split(i, [None, mr])
    jo, jv = sch.split(j, [None, nr])
    r = sch.get_loops(acc)[-1]
    sch.reorder(io, jo, r, ii, jv)
    # "global", not "local": TVM turns a small constant-size global allocation into a stack alloca
    # (LLVM keeps it in registers), but a "local" one inside the parallel loop into a
    # TVMBackendAllocWorkspace call per tile, with the accumulators stored to and reloaded from it.
    sch.set_scope(acc, 0, "global")
    sch.reverse_compute_at(out, jo)
    # Loop annotations on the update block must precede decompose_reduction: afterwards it has no
    # init and its subtree fails the "compact dataflow" check of parallel/vectorize.
    vector = nr > 1
    _vectorize_tile(sch, sch.get_loops(acc)[3:], vector=vector)
    _vectorize_tile(sch, sch.get_loops(out)[2:], vector=vector)
    sch.parallel(io)
    init = sch.decompose_reduction(acc, r)
    _vectorize_tile(sch, sch.get_loops(init)[2:], vector=vector)
    return sch.mod


def _vectorize_tile(
    sch: tvm.s_tir.Schedule, loops: list[tvm.s_tir.schedule.LoopRV], *, vector: bool
) -> None:
    """Vectorise the innermost (N) loop of a register tile and unroll the row loop around it.

    ``reverse_compute_at`` drops unit loops, so ``loops`` holds the tile's 0..2 remaining loops.
    """
    loops = [lp for lp in loops if int(sch.get(lp).extent) > 1]
    if vector and loops:
        sch.vectorize(loops.pop())
    for lp in loops:
        sch.unroll(lp)
