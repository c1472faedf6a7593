"""End-to-end latency of the four systems, interleaved in one run, per (model, batch, threads).

Interleaving (round r runs every system once, in a rotated order) spreads the noise of a shared
machine over all systems alike, so the ratios are fair even when absolute numbers drift. Each timed
call follows one untimed call of the same system: the previous system's worker threads (onnxruntime,
PyTorch's OpenMP and TVM all spin-wait for a while after a run) would otherwise still be burning the
cores the timed system needs, and its caches would hold the other system's weights. Medians are
reported; min and p90 show the spread.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bhvit_export.verify.latency import summary

from . import artifacts, systems

Progress = Callable[[str], None]


@dataclass
class Config:
    model: str
    batch: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.model} b{self.batch} t{self.threads}"


@dataclass
class ConfigResult:
    config: Config
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> summary

    def ratio(self, system: str) -> Optional[float]:
        ours, other = self.latency.get("bhvit"), self.latency.get(system)
        if not ours or not other or not ours["median"]:
            return None
        return other["median"] / ours["median"]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.config.model,
            "batch": self.config.batch,
            "threads": self.config.threads,
        }
        for name, s in self.latency.items():
            out[name] = {"median_ms": s["median"], "min_ms": s["min"], "p90_ms": s["p90"], "runs": s["runs"]}
        out["speedup_vs"] = {s: self.ratio(s) for s in systems.SYSTEMS if s != "bhvit" and s in self.latency}
        return out


def _time(call: Callable[[np.ndarray], Any], x: np.ndarray) -> float:
    t = time.perf_counter()
    call(x)
    return (time.perf_counter() - t) * 1e3


def run(
    models: Sequence[str],
    batches: Sequence[int],
    threads: Sequence[int],
    *,
    rounds: int = 10,
    warmup: int = 2,
    include: Sequence[str] = systems.SYSTEMS,
    cache_dir: Optional[Path] = None,
    say: Progress = lambda _m: None,
) -> list[ConfigResult]:
    """Time every system on every configuration; thread counts run largest first (TVM can only shrink)."""
    cache = artifacts.ensure_dir(cache_dir)
    all_cpus = os.sched_getaffinity(0)
    thread_order = sorted(set(threads), reverse=True)
    systems.init_threads(thread_order[0])
    results = []
    for name in models:
        art = artifacts.model_artifacts(name, say)
        ref_bytes = art.reference.SerializeToString()
        for batch in batches:
            libs = {}
            if "bhvit" in include:
                libs["bhvit"] = artifacts.tvm_library(art.fused, batch, True, cache, say, f"{name}-fused")
            if "tvm_fp32" in include:
                libs["tvm_fp32"] = artifacts.tvm_library(art.reference, batch, False, cache, say, f"{name}-reference")
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            for t in thread_order:
                cfg = Config(name, batch, t)
                # A clean start per configuration: the previous one's sessions (and their worker
                # threads) are released, and the CPU set is whole again should a runtime have
                # pinned the main thread (new worker threads inherit its affinity).
                calls: dict[str, Callable[[np.ndarray], Any]] = {}
                gc.collect()
                os.sched_setaffinity(0, all_cpus)
                for s in include:
                    if s == "pytorch":
                        calls[s] = systems.pytorch_call(art.torch_model, t)
                    elif s == "onnxruntime_fp32":
                        calls[s] = systems.ort_call(ref_bytes, t)
                    else:
                        calls[s] = systems.tvm_call(str(libs[s]), t)
                say(f"{cfg.label}: timing {', '.join(calls)} ({rounds} interleaved rounds)")
                ms: dict[str, list[float]] = {s: [] for s in calls}
                order = list(calls)
                for r in range(warmup + rounds):
                    for s in order[r % len(order):] + order[: r % len(order)]:
                        calls[s](x)  # settle: see the module docstring
                        v = _time(calls[s], x)
                        if r >= warmup:
                            ms[s].append(v)
                results.append(ConfigResult(cfg, {s: summary(v) for s, v in ms.items()}))
    return results


def table(results: Sequence[ConfigResult]) -> str:
    """The printed table: medians in ms, and how many times faster ours is than each other system."""
    head = f"{'config':<16}" + "".join(f"{s:>18}" for s in systems.SYSTEMS) + f"{'vs ort':>9}{'vs torch':>10}{'vs tvm':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(
            f"{r.latency[s]['median']:>15.2f} ms" if s in r.latency else f"{'-':>18}" for s in systems.SYSTEMS
        )
        ratios = "".join(
            f"{(f'{x:.2f}x' if (x := r.ratio(s)) else '-'):>{w}}"
            for s, w in (("onnxruntime_fp32", 9), ("pytorch", 10), ("tvm_fp32", 9))
        )
        lines.append(f"{r.config.label:<16}{cells}{ratios}")
    lines.append("medians of interleaved runs, batch latency; 'vs X' = X's median / ours (higher is better)")
    return "\n".join(lines)
