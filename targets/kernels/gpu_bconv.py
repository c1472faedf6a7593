"""CUDA schedule of the packed ``BinaryConv2d`` (:mod:`bconv`'s compute, 32-bit accumulators).

Three kernel launches, one per stage of :func:`bconv.make_bconv`:

1. ``sign_pad [B, C, Hp, Wp]`` (uint8): one thread per padded pixel, coalesced along ``x``;
2. ``im2col [B, g, Kw, Ho*Wo]``: one thread per patch word, pixels along ``threadIdx.x``, so at
   each of the 64 unrolled bit steps a warp reads 32 neighbouring bytes of one ``sign_pad`` row;
3. ``popc``/``out``: the batched shared-memory popcount GEMM
   (:func:`packed.schedule_batched_popcount_gpu`): rows are output pixels, columns output
   channels (``threadIdx.x``, so the NHWC stores coalesce), the patch words and the weight rows
   (the CPU's transposed copy ``w_t`` inlined) staged ``kc`` words at a time in shared memory;
   ``__popcll`` into int32 registers, then the exact border correction and ``* scale + bias``.

The channels-last variant (:mod:`bconv_nhwc`) stays CPU-only: on the GPU the im2col reads are
already coalesced along pixels from the channel-first signs, and one kernel family is enough.
"""

from __future__ import annotations

import tvm

from . import bconv
from bhvit_export.targets.schedules.gpu.packed import GemmTiles, schedule_batched_popcount_gpu, schedule_columns_gpu, schedule_elementwise_gpu
from .target_info import TargetLike

#: The popcount accumulator type on CUDA (``__popcll`` returns an int).
ACC_DTYPE = "int32"


def bconv_module_gpu(
    geom: bconv.ConvGeometry, target: TargetLike, *,
    out_dtype: bconv.OutDType = "float32", tiles: GemmTiles = GemmTiles(),
) -> tvm.IRModule:
    """Scheduled ``BinaryConv2d`` for a CUDA target (arguments and result as :func:`bconv.make_bconv`)."""
    sch = tvm.s_tir.Schedule(bconv.make_bconv(geom, out_dtype=out_dtype, acc_dtype=ACC_DTYPE))
    schedule_elementwise_gpu(sch, bconv.SIGN_BLOCK, target)
    schedule_columns_gpu(sch, bconv.IM2COL_BLOCK, target)
    sch.compute_inline(sch.get_sblock(bconv.WT_BLOCK))
    schedule_batched_popcount_gpu(
        sch, bconv.ACC_BLOCK, bconv.OUT_BLOCK, target, stage=(bconv.IM2COL_BLOCK, "w_bits"), tiles=tiles
    )
    return sch.mod
