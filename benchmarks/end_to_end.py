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

from . import artifacts, peers, systems

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
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it did not run here
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)  # system -> cosine/top-1 vs PyTorch

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
        out["skipped"] = self.skipped
        out["agreement_with_pytorch"] = self.agreement
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
                libs["bhvit"] = artifacts.tvm_library(art.fused, batch, True, cache, say, f"{art.name}-fused")
            if "tvm_fp32" in include:
                libs["tvm_fp32"] = artifacts.tvm_library(art.reference, batch, False, cache, say, f"{art.name}-reference")
            size = int(art.torch_model.config.image_size)
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            for t in thread_order:
                cfg = Config(art.name, batch, t)
                # A clean start per configuration: the previous one's sessions (and their worker
                # threads) are released, and the CPU set is whole again should a runtime have
                # pinned the main thread (new worker threads inherit its affinity).
                calls: dict[str, Callable[[np.ndarray], Any]] = {}
                skipped: dict[str, str] = {}
                gc.collect()
                os.sched_setaffinity(0, all_cpus)
                for s in include:
                    try:
                        calls[s] = _make_call(s, art, ref_bytes, libs, t, cache)
                    except peers.Unavailable as e:
                        skipped[s] = str(e)
                        say(f"{cfg.label}: skipping {s}: {e}")
                agreement = _agreement(calls, art.torch_model, x)
                say(f"{cfg.label}: timing {', '.join(calls)} ({rounds} interleaved rounds)")
                ms: dict[str, list[float]] = {s: [] for s in calls}
                order = list(calls)
                for r in range(warmup + rounds):
                    for s in order[r % len(order):] + order[: r % len(order)]:
                        os.sched_setaffinity(0, all_cpus)  # a runtime that pins the calling thread (OpenVINO) pins only its own turn
                        calls[s](x)  # settle: see the module docstring
                        v = _time(calls[s], x)
                        if r >= warmup:
                            ms[s].append(v)
                results.append(ConfigResult(cfg, {s: summary(v) for s, v in ms.items()}, skipped, agreement))
    return results


def _logits(result: Any) -> np.ndarray:
    """The logits out of whatever a system's call returns (a tensor, a list, an OpenVINO result)."""
    if hasattr(result, "to_dict"):  # openvino OVDict
        result = list(result.to_dict().values())[0]
    if isinstance(result, (list, tuple)):
        result = result[0]
    if hasattr(result, "detach"):
        result = result.detach()
    return np.asarray(result.numpy() if hasattr(result, "numpy") else result, dtype=np.float32)


def _agreement(calls: dict[str, Callable[[np.ndarray], Any]], model: Any, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Cosine and top-1 agreement of every system with PyTorch eager on the benchmark input.

    A speed number is only worth quoting next to proof that the system computes the same model
    (int8 quantization, for one, may not).
    """
    import torch

    from bhvit_export.verify.metrics import compare

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = {}
    for s, call in calls.items():
        acc = compare(_logits(call(x)), ref)
        out[s] = {"cosine": round(acc.cosine, 6), "top1_agreement": acc.top1_agreement,
                  "max_abs_over_std": round(acc.max_abs_over_std, 4)}
    return out


def _make_call(s: str, art: Any, ref_bytes: bytes, libs: dict[str, Path], t: int, cache: Path) -> Callable[[np.ndarray], Any]:
    """The timed call of system ``s`` at ``t`` threads; :class:`peers.Unavailable` when it cannot run here."""
    if s == "pytorch":
        return systems.pytorch_call(art.torch_model, t)
    if s == "onnxruntime_fp32":
        return systems.ort_call(ref_bytes, t)
    if s == "openvino_fp32":
        return peers.openvino_call(art.reference, t, cache)
    if s == "torch_compile":
        return peers.torch_compile_call(art.torch_model, t)
    if s == "onnxruntime_int8":
        return peers.ort_int8_call(art.reference, t, cache)
    return systems.tvm_call(str(libs[s]), t)


def table(results: Sequence[ConfigResult]) -> str:
    """The printed table: one block per configuration, one row per system, fastest first.

    ``bhvit is`` = the system's median / ours (how many times faster ours is; below 1: slower).
    """
    lines = []
    for r in results:
        lines.append(f"{r.config.label}")
        lines.append(f"  {'system':<18}{'median':>12}{'min':>12}{'p90':>12}{'bhvit is':>14}")
        for s in sorted(r.latency, key=lambda k: r.latency[k]["median"]):
            lt, x = r.latency[s], r.ratio(s)
            rel = "-" if s == "bhvit" else (f"{x:.2f}x faster" if x else "-")
            lines.append(f"  {s:<18}{lt['median']:>9.2f} ms{lt['min']:>9.2f} ms{lt['p90']:>9.2f} ms{rel:>14}")
        if r.agreement:
            worst = min(r.agreement.items(), key=lambda kv: kv[1]["cosine"])
            off = [f"{s} top-1 {a['top1_agreement']:.0%}" for s, a in r.agreement.items() if a["top1_agreement"] < 1]
            lines.append(f"  outputs vs PyTorch eager: lowest cosine {worst[1]['cosine']:.6f} ({worst[0]}), "
                         + (", ".join(off) if off else "same top-1 everywhere"))
        for s, why in r.skipped.items():
            lines.append(f"  {s:<18}{'skipped: ' + why}")
    lines.append("medians of interleaved runs, batch latency in ms; 'bhvit is' = the system's median / ours")
    return "\n".join(lines)
