"""Reductions that are not contractions: softmax, layer/batch norms, means, pooling, sums."""

from __future__ import annotations

from typing import Optional

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from .common import PARALLEL_MIN_WORK, SafeRule, block_infos, extent, f32_lanes, inline_spatial, schedule_spatial, work


def schedule_reduction_block(sch: s_tir.Schedule, info: SBlockInfo, lanes: int) -> None:
    """Spatial loops outermost and fused (parallel when big), reduction loops inside.

    Where the innermost spatial axis is long enough and the reduction is over outer axes (a
    pooling window, a mean over a leading axis), that axis moves inside the reduction loops and is
    vectorised: each step then reads a contiguous row. A reduction over the innermost axis stays a
    scalar loop (vectorising it needs ``rfactor``, which does not compose with the fused parallel
    loop), split so LLVM unrolls a few steps.
    """
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    s_loops = [lp for lp, k in zip(loops, kinds) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds) if k != "S"]
    if not r_loops:
        schedule_spatial(sch, block, lanes)
        return
    big = work(sch, block) >= PARALLEL_MIN_WORK
    sch.reorder(*s_loops, *r_loops)
    vec = None
    if len(s_loops) >= 2 and kinds[-1] == "S":
        inner_ext = extent(sch, s_loops[-1]) or 1
        if inner_ext >= 4:
            vec = s_loops.pop()
    if s_loops:
        outer = sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0]
        if big:
            sch.parallel(outer)
    if vec is not None:
        sch.reorder(*r_loops, vec)
        ext = extent(sch, vec) or 1
        if ext > lanes:
            _, vec = sch.split(vec, factors=[None, lanes])
        sch.vectorize(vec)
        sch.decompose_reduction(block, r_loops[0])
        return
    inner = r_loops[-1]
    ext = extent(sch, inner)
    if ext is not None and ext > lanes:
        _, inner = sch.split(inner, factors=[None, lanes])
    sch.annotate(inner, "pragma_auto_unroll_max_step", lanes)
    sch.annotate(inner, "pragma_unroll_explicit", 1)


class Reduction(SafeRule):
    """Any mix of injective and reduction blocks that are not a two-operand contraction.

    Injective blocks are inlined where possible; each remaining block is scheduled at the root on
    its own (fused + parallel spatial loops, vectorised where the inner axis is spatial). dlight's
    ``cpu.Reduction`` runs before this rule and takes the softmax / layer-norm shape, where all
    blocks share the leading spatial axes and can live under one parallel loop.
    """

    name = "reduction"

    def __init__(self, min_blocks: int = 0) -> None:
        #: Only take functions with at least this many blocks: the long fused token-shift chains
        #: (slices, concats, a mean, norms), where dlight's single shared loop recomputes the
        #: inlined slices per reduction and runs 2x slower than no schedule at all.
        self.min_blocks = min_blocks

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        infos = block_infos(sch)
        if not infos or all(b.is_injective() for b in infos) or len(infos) < self.min_blocks:
            return None
        lanes = f32_lanes(target)
        for info in inline_spatial(sch, infos):
            if info.is_injective():
                schedule_spatial(sch, info.block_rv, lanes)
            else:
                schedule_reduction_block(sch, info, lanes)
        return sch
