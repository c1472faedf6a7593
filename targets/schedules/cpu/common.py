"""Facts and loop transformations every CPU rule of :mod:`bhvit_export.targets.schedules.cpu` shares.

The rules follow dlight's shape (a :class:`ScheduleRule` returns a ``Schedule`` or ``None``), but a
rule that raises while scheduling must not break a user's build: :class:`SafeRule` logs the error
with the rule and function names and lets the next rule (at worst the fallback) take the function;
in strict mode (the tests) it raises instead (:mod:`bhvit_export.targets.schedules.rule_failure`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from bhvit_export.targets.kernels.target_info import u64_lanes
from bhvit_export.targets.schedules.rule_failure import rule_failed

LoopRV = s_tir.schedule.LoopRV
SBlockRV = s_tir.schedule.SBlockRV

#: Below this many loop iterations (spatial x reduction) a nest runs serially: a parallel launch of
#: TVM's thread pool costs a few microseconds, more than the work itself. The test that every
#: function is scheduled uses the same bound.
PARALLEL_MIN_WORK = 16384

#: :func:`schedule_spatial` keeps a row's vectors in a serial loop of their own only when the rows
#: outside it are this many or more (enough parallel chunks for a 4-core board's thread pool).
SERIAL_ROW_MIN_ROWS = 16

#: Serial loops of a conditional block up to this extent are unrolled (see :func:`schedule_spatial`).
SERIAL_UNROLL_MAX = 8

#: :func:`schedule_spatial` unrolls up to this many vectors of one row (see there).
ROW_UNROLL_MAX = 16


def f32_lanes(target: Target) -> int:
    """float32 lanes in one SIMD register of ``target`` (16 on AVX-512, 8 on AVX2, 4 on NEON)."""
    return 2 * u64_lanes(target)


def extent(sch: s_tir.Schedule, loop: LoopRV) -> Optional[int]:
    """The loop's constant extent, or ``None`` where it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two ``<= cap`` dividing ``n`` (1 if ``n`` is odd)."""
    v = 1
    while v * 2 <= cap and n % (v * 2) == 0:
        v *= 2
    return v


def best_divisor(n: int, cap: int) -> int:
    """Largest divisor of ``n`` that is ``<= cap`` (a register tile that needs no tail predicate)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def block_infos(sch: s_tir.Schedule) -> Optional[list[SBlockInfo]]:
    """dlight's normalised block list (``None`` for functions it cannot normalise)."""
    return normalize_prim_func(sch)


def has_if_then_else(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """True for padding-style blocks (their value has an ``if_then_else``: pad, concat).

    A ``Select`` (PReLU, ReLU, ``where``) does not count: it is a vector blend, and must not keep
    its block from being inlined (TVM's own ``HasIfThenElse`` counts it, which left every fused
    PReLU as an extra pass over memory).
    """
    found = []

    def _visit(call: tvm.ir.Call) -> None:
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "prim.if_then_else":
            found.append(call)

    tvm_ffi.structural_walk(sch.get(block).body, (tvm.ir.Call, _visit), order="post")
    return bool(found)


def vars_in(exprs: Sequence[tirx.PrimExpr]) -> set[str]:
    """Names of the variables used in ``exprs`` (names: ``==`` on a ``Var`` builds an expression,
    and block iterator names are unique within a block)."""
    found: set[str] = set()

    def _add(v: tirx.Var) -> None:
        found.add(v.name)

    for e in exprs:
        tvm_ffi.structural_walk(e, (tirx.Var, _add), order="post")
    return found


def inline_spatial(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inline injective blocks into their consumers (or producers) where the schedule allows.

    *Conditional* blocks (an ``if_then_else`` value: padding, concatenation) stay their own stage
    and nothing is inlined into them. Inlined, their condition depends on the vector lane, which
    makes TVM scalarise the whole vector loop (and LLVM lower each ``if_then_else`` to branches);
    worse, a consumer that reads the value several times (PReLU's ``Select``) duplicates the
    branch chain. Materialised, they cost one extra pass over memory.
    """
    remaining = list(infos)
    progress = True
    while progress:
        progress = False
        for info in list(remaining):
            if not info.is_injective() or has_if_then_else(sch, info.block_rv):
                continue
            candidates = [sch.compute_inline]
            if not any(has_if_then_else(sch, p) for p in sch.get_producers(info.block_rv)):
                candidates.append(sch.reverse_compute_inline)
            for inline in candidates:
                try:
                    inline(info.block_rv)
                except Exception:  # noqa: BLE001 - a refusal of the primitive means "cannot inline"
                    continue
                remaining.remove(info)
                progress = True
                break
    return remaining


def work(sch: s_tir.Schedule, block: SBlockRV) -> int:
    """Iterations of all loops above ``block`` (its total scalar work, up to a constant)."""
    total = 1
    for loop in sch.get_loops(block):
        ext = extent(sch, loop)
        total *= ext if ext is not None else 1024
    return total


def schedule_spatial(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorise the contiguous end of a block whose loops are all spatial; parallelise the rows.

    The innermost loops (at least ``lanes`` iterations, the contiguous end of the output) become
    one loop split by the largest power-of-two vector width that divides it, so no tail predicate
    scalarises the vector loop. Outside it, the shortest prefix of outer loops with at least
    :data:`SERIAL_ROW_MIN_ROWS` iterations becomes one parallel loop (if the nest is big enough
    to pay for the thread launch); the loops between it and the vector loop stay serial loops of
    their own. Fused into one flat loop (as before), every vector recomputed its coordinates from
    the flat index: a divide and a modulo per axis, and the token shifts' ``(i + b) mod n`` per
    roll, about a hundred scalar instructions per 4-lane NEON vector in Tiny's shift functions.
    Kept as loops, those are invariant in the inner loops and computed once per row or pixel.
    Small serial loops of a conditional block (a concat's piece index) are unrolled, so each
    copy's ``if_then_else`` folds to one branch.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    big = work(sch, block) >= PARALLEL_MIN_WORK
    exts = [extent(sch, lp) for lp in loops]
    k = len(loops) - 1
    inner_ext = exts[k] or 1
    while inner_ext < lanes and k > 0 and exts[k - 1] is not None:
        k -= 1
        inner_ext *= exts[k]
    inner = sch.fuse(*loops[k:]) if k < len(loops) - 1 else loops[-1]
    v = pow2_divisor(inner_ext, lanes) if exts[-1] is not None else 1
    if v >= 2:
        rest, vec = sch.split(inner, factors=[None, v])
        sch.vectorize(vec)
    else:
        rest = inner
    serial = list(loops[:k]) + [rest]
    serial_exts = [e if e is not None else 1024 for e in exts[:k]] + [max(inner_ext // max(v, 1), 1)]
    p, rows = 0, 1
    while p < len(serial) - 1 and rows < SERIAL_ROW_MIN_ROWS:
        rows *= serial_exts[p]
        p += 1
    if rows < SERIAL_ROW_MIN_ROWS:
        p = len(serial)  # too few rows to share out: one flat loop, as before
    outer = sch.fuse(*serial[:p]) if p > 1 else serial[0]
    if big:
        sch.parallel(outer)
    if has_if_then_else(sch, block):
        for loop, ext in zip(serial[p:], serial_exts[p:]):
            if ext <= SERIAL_UNROLL_MAX:
                sch.unroll(loop)
    elif p < len(serial) and serial_exts[-1] > 1:
        # A row's vectors unrolled (up to ROW_UNROLL_MAX of them): every load then addresses
        # ``[base, #imm]`` from per-row base pointers. In a loop, the fused token shifts' ~34
        # streams each took a register-offset load (2 micro-ops on Cortex-A72, whose 3-wide
        # dispatch then bound the loop): llvm-mca 60.8 -> 46.5 cycles per vector on Tiny's
        # stage-1 shift.
        row = serial_exts[-1]
        if row <= ROW_UNROLL_MAX:
            sch.unroll(serial[-1])
        elif row % ROW_UNROLL_MAX == 0:
            sch.unroll(sch.split(serial[-1], factors=[None, ROW_UNROLL_MAX])[1])


class SafeRule(ScheduleRule):
    """A CPU rule whose schedule errors are logged (raised in strict mode), then mean "not
    applicable" (see the module docstring)."""

    name = "rule"

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Optional[s_tir.Schedule]:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(s_tir.Schedule(func), target)
        except Exception as err:  # noqa: BLE001 - logged (raised in strict mode); the next rule tries
            rule_failed(self.name, func, err)
            return None

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        """Schedule ``sch`` in place and return it, or ``None`` if the rule does not apply."""
        raise NotImplementedError


__all__ = [
    "PARALLEL_MIN_WORK",
    "SafeRule",
    "best_divisor",
    "block_infos",
    "extent",
    "f32_lanes",
    "has_if_then_else",
    "inline_spatial",
    "pow2_divisor",
    "schedule_spatial",
    "vars_in",
    "work",
]
