"""Sign-pack kernel: float32 ``[M, K]`` -> uint64 ``[M, ceil(K/64)]``, bit = ``x (+ shift) < 0``.

This is the activation side of every binary op (``docs/packing.md``): the optional per-column
``shift`` (the learnable RPReLU/ReAct bias folded in front of the sign) is fused so the shifted
activations are never written out. Padding bits beyond K are 0. The comparison is an ordered
``<``, so 0, -0 and NaN all pack to +1, like the numpy reference.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

from .reference import WORD_BITS, num_words
from .target_info import TargetLike

PACK_BLOCK = "pack"


def make_pack(m: int, k: int, *, shift: bool = False) -> tirx.PrimFunc:
    """Unscheduled PrimFunc ``(x [M,K] f32, [shift [K] f32,] bits [M,Kw] u64)``.

    The word is a sum over its 64 bit positions of ``select(neg, 1 << b, 0)`` (distinct bits, so
    sum == OR). Positions past K are masked by the select and their load index is clamped to K-1,
    which keeps every load in bounds without a branch, so the bit loop stays straight-line code.
    """
    if min(m, k) < 1:
        raise ValueError(f"pack needs positive M, K; got {(m, k)}")
    kw = num_words(k)
    x = te.placeholder((m, k), "float32", name="x")
    sh = te.placeholder((k,), "float32", name="shift") if shift else None
    b = te.reduce_axis((0, WORD_BITS), name="b")

    def word(i: tirx.Var, w: tirx.Var) -> tirx.Expr:
        col = w * WORD_BITS + b
        safe = tirx.min(col, k - 1)
        val = x[i, safe] + sh[safe] if sh is not None else x[i, safe]
        neg = tirx.all(col < k, val < tirx.const(0.0, "float32"))
        one = tirx.const(1, "uint64")
        bit = tirx.Select(neg, one << b.var.astype("uint64"), tirx.const(0, "uint64"))
        return te.sum(bit, axis=b)

    bits = te.compute((m, kw), word, name=PACK_BLOCK)
    args = [x, sh, bits] if sh is not None else [x, bits]
    return te.create_prim_func(args)


def schedule_pack(func: tirx.PrimFunc, target: TargetLike) -> tvm.IRModule:
    """Parallel over rows, bit loop fully unrolled (LLVM turns it into compares + shifts/ors).

    The target only matters to LLVM here; the loop structure is the same on x86 and aarch64.
    CUDA targets get :func:`gpu_schedule.schedule_pack_gpu` instead.
    """
    from .gpu_schedule import is_cuda, schedule_pack_gpu

    if is_cuda(target):
        return schedule_pack_gpu(func, target)
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock(PACK_BLOCK)
    i, _, b = sch.get_loops(blk)
    sch.unroll(b)
    sch.parallel(i)
    return sch.mod


def pack_module(m: int, k: int, target: TargetLike, *, shift: bool = False) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel`."""
    return schedule_pack(make_pack(m, k, shift=shift), target)
