"""Target descriptions and the few target facts the schedules depend on.

Schedules only need to know the SIMD width in uint64 lanes and whether a fast vector popcount
exists; those answers come from the architecture record (``targets/arch.py``), so the kernel modules
never parse target strings themselves.
"""

from __future__ import annotations

from typing import Any, Union

import tvm
from tvm.target import codegen

from bhvit_export.targets.arch import AARCH64

TargetLike = Union[str, dict[str, Any], tvm.target.Target]

#: Sapphire Rapids (AVX-512 + VPOPCNTDQ, AVX512-FP16, AMX): for build-only checks of the AVX-512
#: code; what runs here is built for :func:`host_target`.
X86_SAPPHIRERAPIDS: dict[str, Any] = {"kind": "llvm", "mcpu": "sapphirerapids"}
#: AVX2-only x86 (no AVX-512): the fallback schedule, popcount via vpshufb nibble tables.
X86_AVX2: dict[str, Any] = {"kind": "llvm", "mcpu": "haswell"}
#: Raspberry Pi 4 class aarch64 (NEON ``cnt``); cross-compile only on this x86 host.
AARCH64_CORTEX_A72: dict[str, Any] = {
    "kind": "llvm",
    "mtriple": AARCH64.triple,
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
}


def as_target(target: TargetLike) -> tvm.target.Target:
    """Normalise a tag, dict or Target into a ``tvm.target.Target``."""
    if isinstance(target, tvm.target.Target):
        return target
    return tvm.target.Target(target)


def is_aarch64(target: TargetLike) -> bool:
    """True for 64-bit Arm llvm targets (the architecture record of the target's triple, see
    ``targets/arch.py``); False for a CUDA target, whatever its host."""
    from bhvit_export.targets.arch import target_record

    tgt = as_target(target)
    return tgt.kind.name == "llvm" and target_record(tgt) is AARCH64


def has_features(target: tvm.target.Target, *features: str) -> bool:
    """Ask LLVM whether ``target`` (its mcpu/mattr) has all ``features``."""
    return bool(codegen.target_has_features(list(features), target))


def u64_lanes(target: TargetLike) -> int:
    """uint64 lanes per SIMD register the schedules should vectorise to (the architecture record's
    SIMD level the target's features enable, :func:`bhvit_export.targets.arch.arch_of`).

    The level is chosen by asking LLVM for features instead of trusting ``llvm_get_vector_width``,
    which reports the host width (512) even for ``mcpu=haswell`` in TVM 0.27.
    """
    from bhvit_export.targets.arch import arch_of

    tgt = as_target(target)
    if tgt.kind.name != "llvm":
        raise ValueError(f"only llvm CPU targets are scheduled here, got {tgt.kind.name}")
    return arch_of(tgt).u64_lanes


def has_vector_popcount(target: TargetLike) -> bool:
    """True where a vector popcount instruction exists (x86 VPOPCNTDQ, NEON ``cnt``; llvm targets)."""
    from bhvit_export.targets.arch import arch_of

    tgt = as_target(target)
    return tgt.kind.name == "llvm" and arch_of(tgt).vector_popcount


def host_target() -> tvm.target.Target:
    """The machine we run on: LLVM's name of its CPU plus the exact features it has.

    Everything built to run here (tests, ``bench --kernels``, the GEMM benchmark, ``compile
    --target x86_64``) uses this. A bare ``{"kind": "llvm"}`` means generic x86-64 (no AVX, no
    ``vpopcntq``); a fixed CPU such as ``sapphirerapids`` may use extensions this CPU lacks
    (SIGILL on a Zen 4); and the CPU name alone is a model, not this machine (see
    :func:`bhvit_export.targets.cpu_features.host_mattr`).
    """
    from bhvit_export.targets.cpu_features import host_cpu, host_mattr

    spec: dict[str, Any] = {"kind": "llvm", "mcpu": host_cpu()}
    mattr = host_mattr()
    if mattr:
        spec["mattr"] = mattr
    return tvm.target.Target(spec)


def runs_on_host(target: TargetLike) -> list[str]:
    """Features code built for ``target`` may use that this CPU lacks: ``[]`` means it can run here.

    The one gate for running built code: every feature the build enabled, not one flag.
    """
    from bhvit_export.targets.cpu_features import missing_on_host

    return missing_on_host(as_target(target))
