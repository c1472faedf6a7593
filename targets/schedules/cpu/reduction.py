"""Reductions that are not contractions: softmax, layer/batch norms, means, pooling, sums."""

from __future__ import annotations

from typing import Optional

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from .common import (
    PARALLEL_MIN_WORK,
    SafeRule,
    block_infos,
    extent,
    f32_lanes,
    inline_spatial,
    pow2_divisor,
    schedule_spatial,
    vars_in,
    work,
)

#: Reductions of at most this many steps over non-contiguous axes are vectorised over the
#: output (see :func:`_small_outer_reduction`).
SMALL_REDUCTION = 8


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
    if _small_outer_reduction(sch, info, lanes):
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


def _small_outer_reduction(sch: s_tir.Schedule, info: SBlockInfo, lanes: int) -> bool:
    """Schedule a reduction over axes no operand reads contiguously, short (at most
    :data:`SMALL_REDUCTION` steps: the QD context's level count ``sum_t (p >= t_t)`` over its 3
    thresholds) or over whole vectors of the output (pooling windows over NHWC channels), as a
    spatial loop nest: the outer spatial loops fused and parallel, the innermost one a loop of
    its own (vectorised where the vector width divides it) with the reduction unrolled inside.
    Left to the generic path, all spatial loops were one flat loop and every element recomputed
    its coordinates from the flat index; fusing the innermost axis too (to vectorise Tiny's rows
    of 53) made a per-lane gather of the thresholds, 3x slower on the Cortex-A72 estimate.
    Returns ``False`` (nothing changed) where it does not apply."""
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    exts = [extent(sch, lp) for lp in loops]
    if any(e is None for e in exts) or "S" not in kinds:
        return False
    r_total = 1
    for e, k in zip(exts, kinds):
        if k != "S":
            r_total *= e
    s_last = [e for e, k in zip(exts, kinds) if k == "S"][-1]
    if r_total > SMALL_REDUCTION and pow2_divisor(s_last, lanes) < 2:
        return False  # a long reduction worth vectorising only over whole vectors (pooling windows)
    stmt = sch.get(block)
    r_vars = {iv.var.name for iv, k in zip(stmt.iter_vars, kinds) if k != "S"}
    out = stmt.writes[0].source
    for read in stmt.reads:
        if not read.source.same_as(out) and vars_in([read.region[-1].min]) & r_vars:
            return False
    s_loops = [lp for lp, k in zip(loops, kinds) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds) if k != "S"]
    s_exts = [e for e, k in zip(exts, kinds) if k == "S"]
    big = work(sch, block) >= PARALLEL_MIN_WORK
    sch.reorder(*s_loops, *r_loops)
    inner = s_loops[-1]
    outer = sch.fuse(*s_loops[:-1]) if len(s_loops) > 2 else (s_loops[0] if len(s_loops) == 2 else None)
    v = pow2_divisor(s_exts[-1], lanes)
    rest = inner
    if v >= 2:
        # The contiguous output axis in vectors, the reduction unrolled around each vector.
        rest, vec = sch.split(inner, factors=[None, v])
        sch.reorder(rest, *r_loops, vec)
        sch.vectorize(vec)
    if big:  # over the outer spatial loops, or the innermost one's vectors if there are none
        sch.parallel(outer if outer is not None else rest)
    if r_total <= SMALL_REDUCTION:
        for r in r_loops:
            sch.unroll(r)
    sch.decompose_reduction(block, r_loops[0])
    return True


def _vector_window(sch: s_tir.Schedule, info: SBlockInfo, lanes: int) -> bool:
    """True for a reduction over axes no operand reads contiguously, with an innermost spatial
    axis of whole vectors (a pooling window over NHWC channels)."""
    kinds = info.dom_kind()
    loops = sch.get_loops(info.block_rv)
    if "S" not in kinds or "R" not in kinds or len(loops) != len(kinds):
        return False
    s_last = [extent(sch, lp) for lp, k in zip(loops, kinds) if k == "S"][-1]
    if s_last is None or pow2_divisor(s_last, lanes) < 2:
        return False
    stmt = sch.get(info.block_rv)
    r_vars = {iv.var.name for iv, k in zip(stmt.iter_vars, kinds) if k != "S"}
    out = stmt.writes[0].source
    return all(r.source.same_as(out) or not vars_in([r.region[-1].min]) & r_vars for r in stmt.reads)


class Reduction(SafeRule):
    """Any mix of injective and reduction blocks that are not a two-operand contraction.

    Injective blocks are inlined where possible; each remaining block is scheduled at the root on
    its own (fused + parallel spatial loops, vectorised where the inner axis is spatial). dlight's
    ``cpu.Reduction`` runs before this rule and takes the softmax / layer-norm shape, where all
    blocks share the leading spatial axes and can live under one parallel loop.
    """

    name = "reduction"

    def __init__(self, min_blocks: int = 0, windows_only: bool = False) -> None:
        #: Only take functions with at least this many blocks: the long fused token-shift chains
        #: (slices, concats, a mean, norms), where dlight's single shared loop recomputes the
        #: inlined slices per reduction and runs 2x slower than no schedule at all.
        self.min_blocks = min_blocks
        #: Only take functions whose every reduction reduces over axes no operand reads contiguously
        #: with whole vectors of output channels (NHWC pooling windows): dlight's rule would reduce
        #: them one scalar channel at a time.
        self.windows_only = windows_only

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        infos = block_infos(sch)
        if not infos or all(b.is_injective() for b in infos) or len(infos) < self.min_blocks:
            return None
        lanes = f32_lanes(target)
        if self.windows_only and not all(b.is_injective() or _vector_window(sch, b, lanes) for b in infos):
            return None
        for info in inline_spatial(sch, infos):
            if info.is_injective():
                schedule_spatial(sch, info.block_rv, lanes)
            else:
                schedule_reduction_block(sch, info, lanes)
        return sch
