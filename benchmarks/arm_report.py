"""``bench --arm``: whole-model latency estimates per Cortex-A model, the float peers, and a check on x86.

For each CPU model (A55, A72, A76, A78) our fused model and the float reference (TVM fp32) are
compiled for aarch64 with that ``-mcpu``; each runs once under qemu-user with the block-counting
plugin (:mod:`bhvit_export.benchmarks.block_estimate`) and the counted blocks are priced by llvm-mca for that
CPU, at the board clock of :data:`~bhvit_export.benchmarks.block_estimate.CLOCKS_GHZ`. onnxruntime's aarch64
build runs the reference ONNX on the same estimator (:mod:`bhvit_export.benchmarks.ort_aarch64`), where it can.

The method is checked where it can be: the same estimator on an x86-64 build (``-mcpu haswell``:
qemu-x86_64 7.2 has no AVX-512) priced for this host's CPU at its measured clock, against the
measured one-thread latency of the same library on this machine (``x86_validation``).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import artifacts, block_counts, block_estimate

Progress = Callable[[str], None]
SYSTEMS = {"bhvit": True, "tvm_fp32": False}  # name -> packed (fused graph) or the float reference
ORT = "onnxruntime"  # the reference ONNX in onnxruntime's aarch64 build (benchmarks/ort_aarch64.py)
X86_VALIDATION_MCPU = "haswell"


@dataclass
class ArmReport:
    model: str
    estimates: dict[str, dict[str, block_estimate.Estimate]] = field(default_factory=dict)  # cpu -> system -> est
    x86: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    neon_limit: dict[str, float] = field(default_factory=dict)  # cpu -> bMAC/cycle of eor+cnt+accumulate

    def kernel_efficiency(self, cpu: str) -> list[dict[str, Any]]:
        """Our binary kernels (functions with NEON ``cnt``), per kind: whole-call bMAC/cycle vs the NEON limit."""
        est = self.estimates.get(cpu, {}).get("bhvit")
        if est is None:
            return []
        kinds: dict[str, list[float]] = {}
        for f in est.functions:
            if f.lib == "model.so" and f.name.startswith("bhvit_") and f.popcount_bits:
                kind = f.name.replace("_compute_", "")
                k = kinds.setdefault(kind, [0.0, 0.0])
                k[0] += f.popcount_bits
                k[1] += f.cycles
        limit = self.neon_limit.get(cpu, 0.0)
        rows = [{"kernel": k, "ms": cyc / (est.clock_ghz * 1e6), "bmac_per_cycle": bits / cyc,
                 "of_neon_limit": bits / cyc / limit if limit else None} for k, (bits, cyc) in kinds.items()]
        return sorted(rows, key=lambda r: -r["ms"])

    def ratios(self, cpu: str) -> dict[str, float]:
        ours = self.estimates[cpu].get("bhvit")
        return {
            s: e.estimated_ms / ours.estimated_ms
            for s, e in self.estimates[cpu].items() if s != "bhvit" and ours and ours.estimated_ms
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "batch": 1, "threads": 1,
            "method": "qemu-user TCG plugin block counts (one steady-state inference) x llvm-mca cycles per block",
            # cpus[cpu] holds only the systems (the contract: each one {estimated_ms, instructions, clock_ghz, ...}).
            "cpus": {cpu: {s: e.to_json() for s, e in by.items()} for cpu, by in self.estimates.items()},
            "speedup_vs": {cpu: self.ratios(cpu) for cpu in self.estimates},
            "neon_limit_bmac_per_cycle": self.neon_limit,
            "kernels": {cpu: self.kernel_efficiency(cpu) for cpu in self.estimates},
            "x86_validation": self.x86,
            "notes": self.notes,
        }

    def text(self, top: int = 12) -> str:
        systems = [s for s in (*SYSTEMS, ORT) if any(s in by for by in self.estimates.values())]
        head = f"{'cpu':<12}{'clock':>7}" + "".join(f"{s + ' ms':>17}{'insns (M)':>11}" for s in systems) + \
            "".join(f"{'vs ' + s:>17}" for s in systems if s != "bhvit")
        lines = [f"{self.model} b1 t1, estimated (qemu block counts x llvm-mca cycles, board clocks)", head, "-" * len(head)]
        for cpu, by in self.estimates.items():
            clock = next(iter(by.values())).clock_ghz
            cells = "".join(
                f"{by[s].estimated_ms:>17.2f}{by[s].instructions / 1e6:>11.1f}" if s in by else f"{'-':>28}" for s in systems
            )
            ratios = self.ratios(cpu)
            cells += "".join(f"{ratios[s]:>16.2f}x" if s in ratios else f"{'-':>17}" for s in systems if s != "bhvit")
            lines.append(f"{cpu:<12}{clock:>6.1f}G{cells}")
        for cpu, by in self.estimates.items():
            for s, est in by.items():
                if s != "bhvit" or cpu not in ("cortex-a72", "cortex-a76"):
                    continue
                lines += ["", f"where {s} spends its time on {cpu} ({est.estimated_ms:.2f} ms, "
                              f"IPC {est.instructions / est.cycles:.2f}, {est.coverage:.1%} of instructions priced):"]
                for f in est.functions[:top]:
                    name = f.name if len(f.name) <= 70 else f.name[:67] + "..."
                    lines.append(f"  {f.cycles / (est.clock_ghz * 1e6):8.3f} ms {f.cycles / est.cycles:6.1%}"
                                 f"  {f.instructions / 1e6:8.2f} M insns  {f.lib:<18} {name}")
        for cpu in ("cortex-a72", "cortex-a76"):
            rows = self.kernel_efficiency(cpu)
            if rows:
                lines += ["", f"binary kernels on {cpu}, whole calls (epilogues included): binary MACs per cycle "
                              f"vs the NEON limit ({self.neon_limit.get(cpu, 0):.0f}/cycle: eor + cnt + accumulate per 128 bits)"]
                for r in rows[:top]:
                    lines.append(f"  {r['ms']:8.3f} ms {r['bmac_per_cycle']:7.1f} bMAC/cyc {r['of_neon_limit'] or 0:6.0%}  {r['kernel']}")
        if self.x86:
            v = self.x86
            lines += ["", f"x86 check ({v['mcpu_built']} build, llvm-mca -mcpu={v['mcpu_priced']} at the measured "
                          f"{v['clock_ghz']:.2f} GHz): estimated {v['estimated_ms']:.2f} ms, measured "
                          f"{v['measured_ms']:.2f} ms at 1 thread: error {v['relative_error']:+.1%}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _aarch64_target(cpu: str) -> Any:
    from bhvit_export.targets.target_spec import resolve

    return resolve("aarch64", mcpu=cpu).target


def estimate_library(
    runner: Path, library: Path, arch: str, mcpu: str, clock_ghz: float, *, qemu_cpu: Optional[str] = None,
    coverage: float = 0.99, keep: bool = True,
) -> block_estimate.Estimate:
    """Count one inference of ``library`` under qemu (counts kept beside it) and price it for ``mcpu``."""
    counts = block_estimate.count_inference(runner, library, arch, qemu_cpu=qemu_cpu, keep=keep)
    return block_estimate.estimate(counts, arch, mcpu, clock_ghz, coverage=coverage, library=Path(library))


def _time_native(runner: Path, lib: Path, x: Path, y: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds per call of ``lib`` by the host runner at one thread."""
    import json
    import os
    import subprocess

    from bhvit_export.errors import TargetError

    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    cmd = [str(runner), str(lib), str(x), str(y), "--runs", str(rounds), "--warmup", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise TargetError(f"bhvit-run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return [float(t) for t in report["latency_ms"]], [float(t) for t in report.get("cpu_ms", [])]


def x86_validation(model: Any, cache: Path, say: Progress, rounds: int = 30) -> dict[str, Any]:
    """Estimate vs measurement of the same x86-64 (haswell) library at one thread on this host."""
    from bhvit_export.targets.kernels.target_info import host_target
    from bhvit_export.targets.native_build import build_runner

    from .core_clock import measured_ghz

    lib = artifacts.tvm_library(model, 1, True, cache, say, "x86-haswell-fused",
                                {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": X86_VALIDATION_MCPU})
    runner = build_runner("x86_64")
    say(f"x86 check: timing the {X86_VALIDATION_MCPU} build natively at 1 thread ({rounds} runs)")
    with tempfile.TemporaryDirectory(prefix="bhvit-x86-") as tmp:
        x = Path(tmp) / "x.npy"
        np.save(x, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
        ghz_before = measured_ghz()
        times, cpu = _time_native(runner, lib, x, Path(tmp) / "y.npy", rounds)
        ghz = (ghz_before + measured_ghz()) / 2
    # Thread CPU time: on this shared machine the wall time includes the time others' processes ran.
    measured = statistics.median(cpu or times)
    host = str(host_target().attrs["mcpu"])
    say(f"x86 check: counting one inference under qemu-x86_64, pricing for {host}")
    est = estimate_library(runner, lib, "x86_64", host, ghz)
    return {
        "estimated_ms": est.estimated_ms, "measured_ms": measured, "relative_error": (est.estimated_ms - measured) / measured,
        "measured_min_ms": min(cpu or times), "measured_wall_median_ms": statistics.median(times),
        "measured_as": "thread CPU time" if cpu else "wall time", "clock_ghz": ghz, "mcpu_built": X86_VALIDATION_MCPU, "mcpu_priced": host,
        "instructions": est.instructions, "ipc_estimated": est.instructions / est.cycles,
        "functions": est.to_json()["functions"],
    }


def run_arm(
    model: str = "tiny",
    cpus: Sequence[str] = block_estimate.ARM_CPUS,
    systems: Sequence[str] = (*SYSTEMS, ORT),
    *,
    validate_x86: bool = True,
    cache_dir: Optional[Path] = None,
    say: Progress = lambda _m: None,
) -> ArmReport:
    from bhvit_export.targets.native_build import build_runner

    cache = artifacts.ensure_dir(cache_dir)
    art = artifacts.model_artifacts(model, say)
    runner = build_runner("aarch64")
    report = ArmReport(model)
    for cpu in cpus:
        target = _aarch64_target(cpu)
        for s in (s for s in systems if s in SYSTEMS):
            graph = art.fused if SYSTEMS[s] else art.reference
            lib = artifacts.tvm_library(graph, 1, SYSTEMS[s], cache, say, f"{model}-{s}-{cpu}", target)
            say(f"{cpu} {s}: counting one inference under qemu-aarch64 (-cpu {block_counts.QEMU_CPU[cpu]}), "
                f"pricing with llvm-mca -mcpu={cpu}")
            report.estimates.setdefault(cpu, {})[s] = estimate_library(
                runner, lib, "aarch64", cpu, block_estimate.CLOCKS_GHZ[cpu], qemu_cpu=block_counts.QEMU_CPU[cpu]
            )
    report.neon_limit = {cpu: _neon_limit(cpu) for cpu in cpus}
    if ORT in systems:
        _add_onnxruntime(report, art.reference, cpus, cache, say)
    if validate_x86:
        report.x86 = x86_validation(art.fused, cache, say)
    return report


def _neon_limit(cpu: str) -> float:
    """llvm-mca's binary MACs per cycle for the ideal eor + cnt + accumulate loop on ``cpu``."""
    from .mca import DOTPROD_CPUS, ideal_loop, mca

    dot = cpu in DOTPROD_CPUS
    body = ideal_loop(dotprod=dot)
    return 128 * sum(ln.startswith("cnt") for ln in body) / mca(body, cpu, dotprod=dot)["cycles_per_iteration"]


def _add_onnxruntime(report: ArmReport, reference: Any, cpus: Sequence[str], cache: Path, say: Progress) -> None:
    """onnxruntime's aarch64 build on the same estimator; a failed setup is a note, not an error."""
    import hashlib

    from bhvit_export.errors import TargetError

    from . import ort_aarch64

    data = reference.SerializeToString(deterministic=True)
    model = cache / f"{report.model}-reference-{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    if not model.is_file():
        model.write_bytes(data)
    try:
        for cpu in cpus:
            qcpu = block_counts.QEMU_CPU[cpu]
            say(f"{cpu} {ORT}: counting one inference of onnxruntime {ort_aarch64.ORT_VERSION} (aarch64) under qemu "
                f"(-cpu {qcpu}), pricing with llvm-mca -mcpu={cpu}")
            counts = ort_aarch64.count_inference(model, qcpu, say)
            report.estimates.setdefault(cpu, {})[ORT] = block_estimate.estimate(counts, "aarch64", cpu, block_estimate.CLOCKS_GHZ[cpu])
        report.notes.append(f"onnxruntime {ort_aarch64.ORT_VERSION} aarch64 wheel, Debian arm64 python3.11, under qemu-user")
    except TargetError as err:
        report.notes.append(f"onnxruntime aarch64 not run: {err}")
