"""``bench --arm``'s options turned into one report (text or JSON), kept out of the click layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from bhvit_export.errors import TargetError


def bench_arm(
    models: Sequence[str], include: Sequence[str], kernels: bool, cache: Optional[Path], as_json: bool,
    say: Callable[[str], None], cpus: Sequence[str] = (),
) -> str:
    """The whole-model estimate (one model: ``--model``, default tiny) and, with ``--kernels``, the loop
    tables (the binary GEMM's, :mod:`bhvit_export.benchmarks.mca`; the other binary kernels',
    :mod:`bhvit_export.benchmarks.mca_binary_kernels`).

    ``cpus``: the Cortex models to estimate (``--cpu``; default all of them): one CPU is a fraction
    of a cold run's compiles and qemu passes.
    """
    from .arm_report import ORT, SYSTEMS, run_arm

    if len(models) > 1:
        raise TargetError("bench --arm takes one --model")
    known = (*SYSTEMS, ORT)
    # ``--system onnxruntime_fp32`` (bench's name for the x86 onnxruntime) selects onnxruntime here.
    chosen = [ORT if s == "onnxruntime_fp32" else s for s in include] if include else list(known)
    systems = [s for s in chosen if s in known]
    if not systems:
        raise TargetError(f"bench --arm estimates {', '.join(known)}; --system chose none of them")
    from .block_estimate import ARM_CPUS

    unknown = [c for c in cpus if c not in ARM_CPUS]
    if unknown:
        raise TargetError(f"bench --arm estimates {', '.join(ARM_CPUS)}; got --cpu {', '.join(unknown)}")
    report = run_arm(models[0] if models else "tiny", cpus=tuple(cpus) or ARM_CPUS, systems=systems, cache_dir=cache, say=say)
    out = report.to_json()
    text = report.text()
    if kernels:
        from .mca import analyse, format_table

        say("llvm-mca on the aarch64 kernels' inner loops")
        loops = analyse()
        out["kernels"] = loops
        text += "\n\n" + format_table(loops)
        from . import mca_binary_kernels

        others = mca_binary_kernels.analyse()
        out["binary_kernels"] = others
        text += "\n\n" + mca_binary_kernels.format_table(others)
    return json.dumps(out, indent=2, sort_keys=True) if as_json else text
