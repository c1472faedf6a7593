"""Per-PrimFunc time of a built model: which compiled kernels take the time.

TVM 0.27's Relax VM has no profiler of its own (``profile=True`` and the ``Report`` API are gone),
but it can call an *instrument* around every ``Call`` instruction. One instrumented run records
which compiled function is called with which arguments (copied, because memory planning reuses
the buffers); each recorded call is then re-run alone with the library module's
``time_evaluator`` (min of repeats, so the numbers are robust to a shared, noisy machine). Timing
inside the instrument itself would add the Python callback overhead to every call, which is the
same order as the small kernels.

The VM builtins (allocation, shape checks, reshape views) are not PrimFuncs and are left out;
their cost is the difference between the sum of the rows and the whole-model latency.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import tvm
from tvm import relax

from bhvit_export.targets.kernels.target_info import TargetLike

ProfileRow = tuple[str, float, int]
"""(function name, milliseconds per model run summed over its calls, calls per model run)."""


def _library(ex_or_mod: Any, target: Optional[TargetLike]) -> tvm.runtime.Module:
    """The runtime module holding the VM executable (its ``library`` import has the kernels)."""
    if isinstance(ex_or_mod, tvm.IRModule):
        from bhvit_export.targets.build import build

        ex_or_mod = build(ex_or_mod, target)
    if isinstance(ex_or_mod, relax.VMExecutable):
        return ex_or_mod.mod
    if isinstance(ex_or_mod, tvm.runtime.Module):
        return ex_or_mod
    raise TypeError(f"expected an IRModule, a VMExecutable or a loaded library, got {type(ex_or_mod).__name__}")


def _kernels(lib: tvm.runtime.Module) -> tvm.runtime.Module:
    """The compiled-TIR module under the executable (``library`` import), or ``lib`` itself."""
    for imp in lib.imports:
        if imp.kind == "library" or imp.kind == "llvm":
            return imp
    return lib


def _copy(arg: Any, dev: tvm.runtime.Device) -> Any:
    if isinstance(arg, tvm.runtime.Tensor):
        out = tvm.runtime.empty(arg.shape, arg.dtype, dev)
        out.copyfrom(arg)
        return out
    return arg


def record_calls(lib: tvm.runtime.Module, x: np.ndarray) -> list[tuple[str, list[Any]]]:
    """Run ``main`` once on ``x`` and return every compiled-function call with copied arguments."""
    dev = tvm.cpu()
    machine = relax.VirtualMachine(lib, dev)
    kernels = _kernels(lib)
    calls: list[tuple[str, list[Any]]] = []

    def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *args: Any) -> int:
        if before and not symbol.startswith("vm.") and kernels.implements_function(symbol):
            calls.append((symbol, [_copy(a, dev) for a in args]))
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual

    machine.set_instrument(instrument)
    machine["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), dev))
    return calls


def profile_calls(
    lib: tvm.runtime.Module, x: np.ndarray, *, repeat: int = 5, min_repeat_ms: int = 5
) -> list[tuple[str, float]]:
    """Every compiled-function call of one run of ``main`` on ``x``, in execution order, with its ms.

    The order is what maps calls back to model layers (:mod:`bhvit_export.layer_map`).
    """
    kernels = _kernels(lib)
    dev = tvm.cpu()
    out = []
    for name, args in record_calls(lib, x):
        timer = kernels.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
        out.append((name, min(timer(*args).results) * 1e3))
    return out


def aggregate(calls: list[tuple[str, float]]) -> list[ProfileRow]:
    """Per function: ms summed over its calls and the call count, slowest first."""
    totals: dict[str, list[float]] = {}
    for name, ms in calls:
        row = totals.setdefault(name, [0.0, 0])
        row[0] += ms
        row[1] += 1
    return sorted(((n, ms, int(c)) for n, (ms, c) in totals.items()), key=lambda r: -r[1])


def profile_functions(
    ex_or_mod: Union[tvm.IRModule, relax.VMExecutable, tvm.runtime.Module],
    x: np.ndarray,
    target: Optional[TargetLike] = None,
    *,
    repeat: int = 5,
    min_repeat_ms: int = 5,
) -> list[ProfileRow]:
    """Milliseconds each compiled PrimFunc takes in one run of ``main`` on ``x``, slowest first.

    ``ex_or_mod``: a Relax ``IRModule`` (built here for ``target``, default the host), a
    ``VMExecutable`` or a library loaded with ``tvm.runtime.load_module``. Each call is timed alone
    (``time_evaluator``, min over ``repeat`` repeats of at least ``min_repeat_ms``), calls of the
    same function are summed. Thread count is whatever ``TVM_NUM_THREADS`` set for this process.
    """
    lib = _library(ex_or_mod, target)
    return aggregate(profile_calls(lib, x, repeat=repeat, min_repeat_ms=min_repeat_ms))


def format_profile(rows: list[ProfileRow], top: int = 15, width: int = 70) -> str:
    """A plain-text table of the ``top`` rows plus the total over all rows."""
    total = sum(ms for _, ms, _ in rows) or 1.0
    lines = [f"{'ms':>9} {'%':>5} {'calls':>5}  function"]
    for name, ms, calls in rows[:top]:
        short = name if len(name) <= width else name[: width - 3] + "..."
        lines.append(f"{ms:9.3f} {100 * ms / total:5.1f} {calls:5d}  {short}")
    lines.append(f"{total:9.3f} 100.0 {sum(c for *_, c in rows):5d}  (all {len(rows)} functions)")
    return "\n".join(lines)
