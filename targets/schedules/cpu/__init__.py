"""CPU schedules for the float part of the model (everything but the packed ``bhvit`` kernels).

TVM 0.27 ships two dlight CPU rules (GEMV, softmax/norm-style Reduction); without schedules every
other legalised PrimFunc compiles to serial scalar loops. These rules, tried in order on each
PrimFunc that is not already scheduled (our packed kernels carry ``tirx.is_scheduled``), cover
the rest:

1. :class:`~.injective.Injective` - elementwise, transpose, reshape, slice, concat, pad, resize;
2. :class:`~.contraction.Contraction` - matmul / batch matmul / NCHW conv (register-tiled);
3. dlight ``cpu.GEMV`` - matrix-vector (the classifier head);
4. :class:`~.reduction.Reduction` for long fused chains and for NHWC pooling windows (vectors of
   channels), then dlight ``cpu.Reduction`` (softmax, layer norm, other pooling), then
   :class:`~.reduction.Reduction` for the other reductions;
5. :class:`~.fallback.Fallback` - anything left: at least parallel over its spatial loops.

:func:`schedule_module` reports which rule scheduled which function (tests and debugging).
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm import tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from bhvit_export.targets.schedules.rule_failure import ScheduleRuleError, rule_failed

from .common import PARALLEL_MIN_WORK, f32_lanes
from .contraction import Contraction
from .fallback import Fallback
from .injective import Injective
from .reduction import Reduction


#: Functions with this many blocks or more (fused token-shift chains) go to our reduction rule
#: before dlight's: measured on Tiny, dlight's shared-loop schedule is 2x slower than none there,
#: while on softmax, layer norm and pooling it beats ours.
BIG_FUSED_BLOCKS = 8


def default_rules() -> list[ScheduleRule]:
    """The rules in the order they are tried (first applicable wins)."""
    return [
        Injective(),
        Contraction(),
        dlight.cpu.GEMV(),
        Reduction(min_blocks=BIG_FUSED_BLOCKS),
        Reduction(windows_only=True),
        dlight.cpu.Reduction(),
        Reduction(),
        Fallback(),
    ]


def _rule_name(rule: ScheduleRule) -> str:
    return getattr(rule, "name", None) or f"dlight.{type(rule).__name__}"


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """True for functions that carry ``tirx.is_scheduled`` (ours, or already scheduled)."""
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def schedule_function(
    func: tirx.PrimFunc, target: Target, rules: Optional[list[ScheduleRule]] = None
) -> tuple[Optional[tirx.PrimFunc], Optional[str]]:
    """(scheduled function, rule name), or ``(None, None)`` when no rule applies."""
    for rule in rules if rules is not None else default_rules():
        try:
            sch = rule.apply(func, target, False)
        except ScheduleRuleError:
            raise  # strict mode: one of our rules already named itself and the function
        except Exception as err:  # noqa: BLE001 - a dlight rule that trips over a shape: logged, the next tries
            rule_failed(_rule_name(rule), func, err)
            sch = None
        if sch is None:
            continue
        if isinstance(sch, list):
            sch = sch[0]
        return sch.mod["main"].with_attr("tirx.is_scheduled", True), _rule_name(rule)
    return None, None


def schedule_module(
    mod: tvm.IRModule, target: Target, rules: Optional[list[ScheduleRule]] = None
) -> tuple[tvm.IRModule, dict[str, str]]:
    """Schedule every unscheduled PrimFunc of ``mod``; returns the module and ``{name: rule}``
    (``"unscheduled"`` where no rule applied)."""
    updates: dict[tvm.ir.GlobalVar, tirx.PrimFunc] = {}
    report: dict[str, str] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        new, rule = schedule_function(func, target, rules)
        report[gv.name_hint] = rule or "unscheduled"
        if new is not None:
            updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod, report


def apply_schedules(target: Target) -> tvm.transform.Pass:
    """Module pass running :func:`schedule_module` with :func:`default_rules` for ``target``."""

    @tvm.transform.module_pass(opt_level=0, name="BhvitCPUSchedules")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return schedule_module(mod, target)[0]

    return _pass


__all__ = [
    "PARALLEL_MIN_WORK",
    "Contraction",
    "Fallback",
    "Injective",
    "Reduction",
    "apply_schedules",
    "default_rules",
    "f32_lanes",
    "is_scheduled",
    "schedule_function",
    "schedule_module",
]
