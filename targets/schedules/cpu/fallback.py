"""The last rule: whatever no other rule took still gets parallel / vectorised loops."""

from __future__ import annotations

from typing import Optional

from tvm import s_tir
from tvm.target import Target

from .common import PARALLEL_MIN_WORK, SafeRule, block_infos, f32_lanes, schedule_spatial, work
from .reduction import schedule_reduction_block


class Fallback(SafeRule):
    """Each root block alone: spatial blocks fused / parallel / vectorised, reductions parallel
    over their spatial loops. Functions dlight cannot normalise (opaque blocks) get their
    outermost loops parallelised where the schedule proves that safe (``parallel`` refuses loops
    bound to reduction iterators)."""

    name = "fallback"

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        lanes = f32_lanes(target)
        infos = block_infos(sch)
        if infos is not None:
            for info in infos:
                if info.is_injective():
                    schedule_spatial(sch, info.block_rv, lanes)
                else:
                    schedule_reduction_block(sch, info, lanes)
            return sch
        root = sch.get_sblock("root")
        changed = False
        for child in sch.get_child_blocks(root):
            loops = sch.get_loops(child)
            if loops and work(sch, child) >= PARALLEL_MIN_WORK:
                try:
                    sch.parallel(loops[0])
                    changed = True
                except Exception:  # noqa: BLE001 - not provably data-parallel: leave it serial
                    pass
        return sch if changed else None
