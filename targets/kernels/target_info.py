"""Target descriptions and the few target facts the schedules depend on.

Schedules only need to know the SIMD width in uint64 lanes and whether a fast vector popcount
exists; keeping that here means the kernel modules never parse target strings themselves.
"""

from __future__ import annotations

from typing import Any, Union

import tvm
from tvm.target import codegen

TargetLike = Union[str, dict[str, Any], tvm.target.Target]

#: The host of this project (Sapphire Rapids: AVX-512 + VPOPCNTDQ).
X86_SAPPHIRERAPIDS: dict[str, Any] = {"kind": "llvm", "mcpu": "sapphirerapids"}
#: AVX2-only x86 (no AVX-512): the fallback schedule, popcount via vpshufb nibble tables.
X86_AVX2: dict[str, Any] = {"kind": "llvm", "mcpu": "haswell"}
#: Raspberry Pi 4 class aarch64 (NEON ``cnt``); cross-compile only on this x86 host.
AARCH64_CORTEX_A72: dict[str, Any] = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
}


def as_target(target: TargetLike) -> tvm.target.Target:
    """Normalise a tag, dict or Target into a ``tvm.target.Target``."""
    if isinstance(target, tvm.target.Target):
        return target
    return tvm.target.Target(target)


def is_aarch64(target: TargetLike) -> bool:
    """True for 64-bit Arm targets (decided by the triple, since ``feature.*`` is Arm-only)."""
    tgt = as_target(target)
    triple = str(tgt.attrs.get("mtriple", ""))
    return triple.startswith(("aarch64", "arm64")) or bool(tgt.attrs.get("feature.is_aarch64", False))


def _has(target: tvm.target.Target, *features: str) -> bool:
    """Ask LLVM whether ``target`` (its mcpu/mattr) has all ``features``."""
    return bool(codegen.target_has_features(list(features), target))


def u64_lanes(target: TargetLike) -> int:
    """uint64 lanes per SIMD register the schedules should vectorise to.

    We ask LLVM for features instead of trusting ``llvm_get_vector_width``, which reports the host
    width (512) even for ``mcpu=haswell`` in TVM 0.27.
    """
    tgt = as_target(target)
    if tgt.kind.name != "llvm":
        raise ValueError(f"only llvm CPU targets are scheduled here, got {tgt.kind.name}")
    if is_aarch64(tgt):
        return 2  # 128-bit NEON; SVE is not used.
    if _has(tgt, "avx512f"):
        return 8
    if _has(tgt, "avx2"):
        return 4
    return 2  # SSE2 baseline


def has_vector_popcount(target: TargetLike) -> bool:
    """True where a vector popcount instruction exists (x86 VPOPCNTDQ, NEON ``cnt``)."""
    tgt = as_target(target)
    if is_aarch64(tgt):
        return True
    return _has(tgt, "avx512vpopcntdq")


def host_target() -> tvm.target.Target:
    """The machine we run on, with its real mcpu.

    A bare ``{"kind": "llvm"}`` means generic x86-64 (no AVX at all, no ``vpopcntq``), so anything
    timed or tested on the host should name the CPU explicitly.
    """
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
