"""One ``bhvit-export bench`` run: end-to-end table, optional kernel table and breakdown, JSON, PNG."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import end_to_end, systems

Progress = Callable[[str], None]


@dataclass
class BenchReport:
    results: list[end_to_end.ConfigResult]
    kernels: Optional[dict[str, Any]] = None
    breakdown: Optional[list[dict[str, Any]]] = None
    remainder: Optional[dict[str, Any]] = None
    plot: Optional[str] = None
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "configs": {r.config.label: r.to_json() for r in self.results},
            "kernels": self.kernels,
            "breakdown": self.breakdown,
            "remainder": self.remainder,
            "plot": self.plot,
        }

    def text(self) -> str:
        from .kernels import format_kernel_table

        parts = [f"machine: {self.machine}", end_to_end.table(self.results)]
        if self.kernels:
            parts.append(format_kernel_table(self.kernels))
        if self.breakdown:
            total = sum(r["ms"] for r in self.breakdown)
            rows = [f"per-function time of our model ({total:.1f} ms in compiled functions):"]
            rows += [f"  {r['ms']:9.3f} ms  {r['ms'] / total:6.1%}  x{r['calls']:<3d} {r['name']}" for r in self.breakdown[:20]]
            parts.append("\n".join(rows))
        if self.remainder:
            from .remainder import format_split

            parts.append(format_split(self.remainder["split"], self.remainder["onnxruntime_ops"]))
        if self.plot:
            parts.append(f"wrote {self.plot}")
        return "\n\n".join(parts)


def _machine() -> dict[str, Any]:
    import os

    from bhvit_export.targets.kernels.target_info import host_target

    return {
        "cpu": str(host_target().attrs["mcpu"]),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def run_bench(
    *,
    models: Sequence[str],
    batches: Sequence[int],
    threads: Sequence[int],
    rounds: int = 10,
    include: Optional[Sequence[str]] = None,
    kernels: bool = False,
    breakdown: bool = False,
    plot: Optional[Path] = None,
    cache: Optional[Path] = None,
    say: Progress = lambda _m: None,
) -> BenchReport:
    """Everything ``bhvit-export bench`` prints (see the module docstrings of this package)."""
    results = end_to_end.run(
        models, batches, threads, rounds=rounds, include=include or systems.SYSTEMS, cache_dir=cache, say=say
    )
    report = BenchReport(results, machine=_machine())
    if kernels or breakdown:
        from . import artifacts

        art = artifacts.model_artifacts(models[0], say)
        if kernels:
            from .kernels import kernel_table

            report.kernels = kernel_table(art.fused, min(threads), say)
        if breakdown:
            import numpy as np
            import tvm

            from bhvit_export.targets.profile import profile_functions

            lib = artifacts.tvm_library(art.fused, 1, True, artifacts.ensure_dir(cache), say, f"{art.name}-fused")
            say("profiling our compiled model function by function")
            rows = profile_functions(tvm.runtime.load_module(str(lib)), np.zeros((1, 3, 224, 224), np.float32))
            report.breakdown = [{"name": n, "ms": ms, "calls": c} for n, ms, c in rows]
            from .remainder import ort_op_times, split

            # Our breakdown ran on the thread pool as the timing loop left it: the smallest count.
            say(f"profiling onnxruntime node by node ({min(threads)} thread(s))")
            ort_ops = ort_op_times(art.reference, min(threads))
            report.remainder = {"split": split(report.breakdown, ort_ops), "onnxruntime_ops": ort_ops, "threads": min(threads)}
    if plot is not None:
        from .plot import write_png

        report.plot = str(write_png(results, plot))
    return report
