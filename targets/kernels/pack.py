"""Sign-pack kernel: float32 ``[M, K]`` -> uint64 ``[M, ceil(K/64)]``, bit = ``x (+ shift) < 0``.

This is the activation side of every binary op (``docs/packing.md``): the optional per-column
``shift`` (the learnable RPReLU/ReAct bias folded in front of the sign) is fused so the shifted
activations are never written out. Padding bits beyond K are 0. The comparison is an ordered
``<``, so 0, -0 and NaN all pack to +1, like the numpy reference.

Two forms of the same function:

* CPU targets (:func:`make_pack_vector`): each full word is one 64-lane compare whose mask *is* the
  word, ``reinterpret(uint64, cast(uint1x64, x + shift < 0))``. LLVM lowers the ``<64 x i1>`` to
  four ``vcmpltps`` into mask registers joined with ``kunpck`` (AVX-512) or to compares, narrowing
  and a bit-weight reduction (NEON), instead of 64 scalar compare/shift/or steps per word: 3.5x
  faster at 3136x512 on one Sapphire Rapids thread (0.86 -> 0.25 ms, memory-bound now). A partial
  last word (K not a multiple of 64) keeps the scalar form.
* CUDA (:func:`make_pack` + :func:`packed.schedule_pack_gpu`): the TE compute, one thread a
  word, the source rows staged in shared memory by coalesced reads first.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

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


def _mask_word(x: tirx.Buffer, sh: "tirx.Buffer | None", row: tirx.Expr, col0: tirx.Expr) -> tirx.Expr:
    """The uint64 word of 64 columns from ``col0``: the compare mask of ``x (+ shift) < 0``."""
    cols = tirx.Ramp(col0, 1, WORD_BITS)
    val = tirx.BufferLoad(x, [row, cols])
    if sh is not None:
        val = val + tirx.BufferLoad(sh, [cols])
    neg = val < tirx.Broadcast(tirx.const(0.0, "float32"), WORD_BITS)
    return tirx.reinterpret("uint64", tirx.Cast(f"uint1x{WORD_BITS}", neg))


def _tail_word(x: tirx.Buffer, sh: "tirx.Buffer | None", row: tirx.Expr, col0: int, k: int) -> tirx.Expr:
    """The partial last word (``k - col0 < 64`` columns) as an OR of single-bit selects."""
    word = tirx.const(0, "uint64")
    for b in range(k - col0):
        val = x[row, col0 + b] + sh[col0 + b] if sh is not None else x[row, col0 + b]
        word = word | tirx.Select(val < tirx.const(0.0, "float32"), tirx.const(1 << b, "uint64"), tirx.const(0, "uint64"))
    return word


def declare_pack_args(m: int, k: int, shift: bool) -> tuple[tirx.Buffer, "tirx.Buffer | None", tirx.Buffer]:
    """The scheduled packs' signature, inside ``T.prim_func`` (shared with :mod:`pack_neon`):
    ``(x [M,K] f32, [shift [K] f32,] bits [M,ceil(K/64)] u64)``."""
    if min(m, k) < 1:
        raise ValueError(f"pack needs positive M, K; got {(m, k)}")
    T.func_name("main")
    x = T.arg("x", T.Buffer((m, k), "float32"))
    sh = T.arg("shift", T.Buffer((k,), "float32")) if shift else None
    bits = T.arg("bits", T.Buffer((m, num_words(k)), "uint64"))
    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
    return x, sh, bits


def make_pack_vector(m: int, k: int, *, shift: bool = False) -> tirx.PrimFunc:
    """Scheduled CPU PrimFunc with :func:`make_pack`'s arguments and result, rows in parallel."""
    kw, full = num_words(k), k // WORD_BITS
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            x, sh, bits = declare_pack_args(m, k, shift)
            with T.parallel(0, m) as i:
                if full:
                    with T.serial(0, full) as w:
                        T.buffer_store(bits, _mask_word(x, sh, i, w * WORD_BITS), [i, w])
                if kw > full:
                    T.buffer_store(bits, _tail_word(x, sh, i, full * WORD_BITS, k), [i, full])
    return ib.get()


def schedule_pack(func: tirx.PrimFunc, target: TargetLike) -> tvm.IRModule:
    """Parallel over rows, bit loop fully unrolled (LLVM turns it into compares + shifts/ors).

    The target only matters to LLVM here; the loop structure is the same on x86 and aarch64.
    CUDA targets get :func:`packed.schedule_pack_gpu` instead.
    """
    from bhvit_export.targets.schedules.gpu.packed import is_cuda, schedule_pack_gpu

    if is_cuda(target):
        return schedule_pack_gpu(func, target)
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock(PACK_BLOCK)
    i, _, b = sch.get_loops(blk)
    sch.unroll(b)
    sch.parallel(i)
    return sch.mod


def pack_module(m: int, k: int, target: TargetLike, *, shift: bool = False) -> tvm.IRModule:
    """Scheduled module, ready for :func:`build.build_kernel`: mask form on x86, per-register NEON form
    (:mod:`pack_neon`) on aarch64, TE form on CUDA."""
    from bhvit_export.targets.schedules.gpu.packed import is_cuda

    from .target_info import is_aarch64

    if is_cuda(target):
        return schedule_pack(make_pack(m, k, shift=shift), target)
    if is_aarch64(target):
        from .pack_neon import make_pack_neon

        return tvm.IRModule({"main": make_pack_neon(m, k, shift=shift)})
    return tvm.IRModule({"main": make_pack_vector(m, k, shift=shift)})
