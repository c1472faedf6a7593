"""The one gate for tests that run compiled CPU code: build for this CPU, run what this CPU can run.

Kernels under test are built for :func:`host_target` (LLVM's name of this CPU plus its exact
features), never for a fixed model such as ``sapphirerapids``, whose code may use extensions this
CPU lacks (SIGILL on a Zen 4, which has VPOPCNTDQ but not AVX512-FP16 or AMX). Cross-CPU checks
only compile and disassemble. ``runs_here(target)`` skips, naming the missing features, when code
built for ``target`` may use something this CPU lacks (``BHVIT_PRETEND_CPU`` fakes the CPU).
"""

from __future__ import annotations

import pytest

from bhvit_export.targets.cpu_features import host_cpu
from bhvit_export.targets.kernels.target_info import TargetLike, as_target, host_target, runs_on_host

#: What the kernel tests build for and run.
HOST = host_target()


def runs_here(target: TargetLike = HOST) -> pytest.MarkDecorator:
    """Skip unless this CPU has every feature code built for ``target`` may use."""
    missing = runs_on_host(target)
    cpu = as_target(target).attrs.get("mcpu", "generic")
    return pytest.mark.skipif(
        bool(missing), reason=f"this CPU ({host_cpu()}) lacks {', '.join(missing)}, which {cpu} code may use"
    )
