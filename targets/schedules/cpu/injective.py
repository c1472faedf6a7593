"""Injective functions: elementwise chains, transposes, reshapes, slices, concats, pads, resizes."""

from __future__ import annotations

from typing import Optional

from tvm import s_tir
from tvm.target import Target

from .common import SafeRule, block_infos, f32_lanes, inline_spatial, schedule_spatial


class Injective(SafeRule):
    """Every block spatial: inline all but the outputs and the conditional stages (concat, pad;
    see :func:`~.common.inline_spatial`), then fuse / parallelise / vectorise each remaining one."""

    name = "injective"

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        infos = block_infos(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        for info in inline_spatial(sch, infos):
            schedule_spatial(sch, info.block_rv, f32_lanes(target))
        return sch
