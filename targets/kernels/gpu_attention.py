"""CUDA schedules of the packed attention kernels: ``BinaryAttentionScores`` and ``QDAttentionContext``.

The computes are :mod:`attention`'s (the same stages the CPU runs, ``docs/packing.md``), built with
32-bit popcount accumulators; only the loop nests are GPU ones. Each stage becomes one kernel
launch (TVM splits a PrimFunc at every top-level thread-bound loop nest):

Scores, per (batch, head):

1. ``q_bits [B*h, N, dw]`` and ``k_bits [B*h, dw, N]``: the shifted signs of ``q``/``k`` packed
   along the head dim, read through a shared-memory tile so global reads coalesce
   (:func:`packed.schedule_bitpack_stage_gpu`);
2. ``popc``/``out``: ``d - 2 popc(q ^ k)`` as the batched shared-memory GEMM
   (:func:`packed.schedule_batched_popcount_gpu`, ``__popcll`` into int32 registers),
   ``/ scale`` in the epilogue, keys along ``threadIdx.x`` so the ``[B*h, N, N]`` stores coalesce.

QD context, per (batch, head):

1. ``levels [B*h, N, N]`` (uint8, 0..3): one thread per probability, coalesced;
2. ``plane0``/``plane1 [B*h, N, nw]``: the level bit planes packed along keys, staged as in 1. above;
3. ``v_bits [B*h, nw, d]``: ``v + shift < 0`` packed along keys, one thread per feature (a warp
   reads 32 consecutive features of one key per step: coalesced without staging);
4. ``popc``/``out``: per output, ``sum_planes w_P (popc(P) - 2 popc(P & vneg))`` over the key
   words, the batched GEMM again (planes and ``v_bits`` staged), ``* alpha`` in the epilogue,
   written straight into ``[B, N, C]``.

GSB attention (issue #15) keeps its float lowering on CUDA.
"""

from __future__ import annotations

import tvm

from . import attention
from bhvit_export.targets.schedules.gpu.packed import (
    GemmTiles,
    schedule_batched_popcount_gpu,
    schedule_bitpack_stage_gpu,
    schedule_columns_gpu,
    schedule_elementwise_gpu,
)
from .target_info import TargetLike

#: The popcount accumulator type on CUDA (``__popcll`` returns an int).
ACC_DTYPE = "int32"


def scores_module_gpu(
    b: int, n: int, c: int, h: int, scale: float, target: TargetLike, *,
    out_dtype: attention.OutDType = "float32", tiles: GemmTiles = GemmTiles(),
) -> tvm.IRModule:
    """Scheduled ``BinaryAttentionScores`` for a CUDA target (arguments as :func:`attention.make_scores`)."""
    d = c // h
    func = attention.make_scores(b, n, c, h, scale, out_dtype=out_dtype, acc_dtype=ACC_DTYPE)
    sch = tvm.s_tir.Schedule(func)
    schedule_bitpack_stage_gpu(sch, attention.Q_BLOCK, batch=(0,), row=1, word=2, source="q", bits=d)
    schedule_bitpack_stage_gpu(sch, attention.K_BLOCK, batch=(0,), row=2, word=1, source="k", bits=d)
    schedule_batched_popcount_gpu(
        sch, attention.ACC_BLOCK, attention.OUT_BLOCK, target, stage=(attention.Q_BLOCK, attention.K_BLOCK), tiles=tiles
    )
    return sch.mod


def qd_context_module_gpu(
    b: int, n: int, c: int, h: int, target: TargetLike, *,
    out_dtype: attention.OutDType = "float32", tiles: GemmTiles = GemmTiles(),
) -> tvm.IRModule:
    """Scheduled ``QDAttentionContext`` for a CUDA target (arguments as :func:`attention.make_qd_context`)."""
    func = attention.make_qd_context(b, n, c, h, out_dtype=out_dtype, acc_dtype=ACC_DTYPE)
    sch = tvm.s_tir.Schedule(func)
    schedule_elementwise_gpu(sch, attention.LEVEL_BLOCK, target)
    for plane in (attention.PLANE0_BLOCK, attention.PLANE1_BLOCK):
        schedule_bitpack_stage_gpu(sch, plane, batch=(0,), row=1, word=2, source=attention.LEVEL_BLOCK, bits=n)
    schedule_columns_gpu(sch, attention.V_BLOCK, target)
    schedule_batched_popcount_gpu(
        sch, attention.ACC_BLOCK, attention.OUT_BLOCK, target,
        stage=(attention.PLANE0_BLOCK, attention.PLANE1_BLOCK, attention.V_BLOCK), tiles=tiles,
    )
    return sch.mod
