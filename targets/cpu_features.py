"""CPU instruction-set features: what a build may use, what a CPU has, and what is missing.

Code built with ``-mcpu X`` may use every extension of X, and running it on a CPU that lacks one
dies with SIGILL (Sapphire Rapids code on a Zen 4: both have AVX-512 VPOPCNTDQ, only one has
AVX512-FP16 and AMX). So builds meant to run here are built for this CPU (:func:`host_cpu` plus
:func:`host_features`), bundles record :func:`target_features`, and ``verify`` and the tests
compare them with what the CPU has (:func:`missing`) before running anything.

Features are named as LLVM names them (``avx512vpopcntdq``, ``dotprod``); a CPU's own list comes
from Linux (``/proc/cpuinfo`` flags, or the aarch64 HWCAP names), mapped through the tables below.
Only instruction-set extensions that compiled code can depend on are listed: LLVM's tuning flags
(``prefer-256-bit``, ``fast-gather``, ...) are not features of a CPU, and crypto, system and
OS-gated extensions (``aes``, ``sha2``, ``pku``, ``shstk``, ``uintr``, ``waitpkg``, ...) are left
out because LLVM only emits them through intrinsics our kernels never call, while boards and
hypervisors routinely lack or hide them (LLVM's ``cortex-a72`` has ``aes``, a Raspberry Pi 4 does not).

``BHVIT_PRETEND_CPU=znver4`` makes this machine report that CPU's name and its LLVM features
instead of its own: a test hook to see what the gating does on a CPU we do not have. Features
of that CPU this machine lacks are dropped (LLVM's znver4 code uses SSE4A's ``insertq``, which an
Intel CPU lacks), so what is built for "this CPU" still runs here: ``znver4`` with ``-sse4a``.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Optional

from bhvit_export.targets.arch import ARCHES, X86_64, arch_for_triple

#: Test hook: an LLVM CPU name this machine pretends to be (name and features).
PRETEND_ENV = "BHVIT_PRETEND_CPU"

#: x86-64: LLVM feature -> Linux ``/proc/cpuinfo`` flag.
X86_FEATURES: dict[str, str] = {
    "cmov": "cmov",
    "cx8": "cx8",
    "cx16": "cx16",
    "sahf": "lahf_lm",
    "mmx": "mmx",
    "sse": "sse",
    "sse2": "sse2",
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "crc32": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "lzcnt": "abm",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "tbm": "tbm",
    "movbe": "movbe",
    "adx": "adx",
    "prfchw": "3dnowprefetch",
    "f16c": "f16c",
    "fma": "fma",
    "fma4": "fma4",
    "xop": "xop",
    "avx": "avx",
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect",
    "avxvnni": "avx_vnni",
    "avxifma": "avx_ifma",
    "avxvnniint8": "avx_vnni_int8",
    "avxvnniint16": "avx_vnni_int16",
    "avxneconvert": "avx_ne_convert",
    "gfni": "gfni",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
    "amx-fp16": "amx_fp16",
    "amx-complex": "amx_complex",
}

#: aarch64: LLVM feature -> Linux HWCAP name (the ``Features`` line of ``/proc/cpuinfo``).
AARCH64_FEATURES: dict[str, str] = {
    "fp-armv8": "fp",
    "neon": "asimd",
    "crc": "crc32",
    "lse": "atomics",
    "rdm": "asimdrdm",
    "fullfp16": "asimdhp",
    "dotprod": "asimddp",
    "rcpc": "lrcpc",
    "fp16fml": "asimdfhm",
    "jsconv": "jscvt",
    "complxnum": "fcma",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}

#: The feature table of each architecture record (``targets/arch.py``), by its name.
TABLES = {"x86_64": X86_FEATURES, "aarch64": AARCH64_FEATURES}


def _table(arch: str) -> dict[str, str]:
    from bhvit_export.targets.toolchain import normalize_arch

    return TABLES[normalize_arch(arch)]


def from_linux_flags(arch: str, flags: Iterable[str]) -> frozenset[str]:
    """The LLVM features a CPU with these Linux flags (cpuinfo or HWCAP names) has."""
    have = set(flags)
    return frozenset(llvm for llvm, linux in _table(arch).items() if linux in have)


def parse_cpuinfo(text: str) -> Optional[tuple[str, frozenset[str]]]:
    """``(arch, LLVM features)`` from ``/proc/cpuinfo`` text; None if it has no flags line.

    The arch is read from which line is there (``flags`` on x86, ``Features`` on aarch64), so a
    foreign text (qemu-user passes the host's cpuinfo through) is recognised as such.
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        for rec in ARCHES.values():
            if key.strip() == rec.cpuinfo_key:
                return rec.name, from_linux_flags(rec.name, value.split())
    return None


def parse_report(text: str) -> Optional[tuple[str, frozenset[str]]]:
    """``(arch, LLVM features)`` from the native helpers' ``ARCH: flag flag ...`` line."""
    arch, sep, flags = text.strip().partition(":")
    if not sep or arch.strip() not in TABLES:
        return None
    return arch.strip(), from_linux_flags(arch.strip(), flags.split())


def _pretend() -> Optional[str]:
    return os.environ.get(PRETEND_ENV) or None


def _arch_target(arch: str, cpu: str, mattr: Optional[list[str]] = None) -> Any:
    import tvm

    spec: dict[str, Any] = {"kind": "llvm", "mtriple": ARCHES[arch].triple, "mcpu": cpu}
    if mattr:
        spec["mattr"] = mattr
    return tvm.target.Target(spec)


def target_features(target: Any) -> list[str]:
    """Sorted LLVM features (of the tables above) that code built for ``target``'s CPU may use.

    ``target``: a TVM target (its host for CUDA targets); its mcpu and mattr both count.
    """
    import tvm
    from tvm.target import codegen

    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if tgt.host is not None and tgt.kind.name != "llvm":
        tgt = tgt.host
    triple = str(tgt.attrs.get("mtriple", "") or "")
    from bhvit_export.targets.toolchain import host_arch

    rec = arch_for_triple(triple)
    arch = rec.name if rec is not None else (X86_64.name if triple else host_arch())
    if not triple:  # LLVM answers for the triple it is given: name the arch explicitly
        mattr = [str(a) for a in (tgt.attrs.get("mattr") or [])]
        tgt = _arch_target(arch, str(tgt.attrs.get("mcpu", "") or "generic"), mattr)
    have = set(codegen.llvm_get_cpu_features(tgt))
    return sorted(f for f in _table(arch) if f in have)


def target_cpu(target: Any) -> str:
    """The ``mcpu`` of a target (its CPU host for CUDA), or ``generic``."""
    import tvm

    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if tgt.host is not None and tgt.kind.name != "llvm":
        tgt = tgt.host
    return str(tgt.attrs.get("mcpu", "") or "generic")


@functools.lru_cache(maxsize=None)
def _host(pretend: Optional[str]) -> tuple[str, Optional[frozenset[str]]]:
    """(CPU name, LLVM features or None where /proc/cpuinfo cannot tell) of this machine."""
    from bhvit_export.targets.toolchain import host_arch

    arch = host_arch()
    try:
        parsed = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        parsed = None
    have = parsed[1] if parsed is not None and parsed[0] == arch else None
    if pretend:  # only what this machine can also run: what it builds for "this CPU" must run here
        wanted = frozenset(target_features(_arch_target(arch, pretend)))
        return pretend, wanted & have if have is not None else wanted
    try:
        from tvm.target import codegen

        name = str(codegen.llvm_get_system_cpu())
    except ImportError:  # a verify-only device: the name is for messages only
        name = platform.processor() or arch
    return name, have


def host_cpu() -> str:
    """LLVM's name of this machine's CPU (``znver4``, ``sapphirerapids``; or the pretended one)."""
    return _host(_pretend())[0]


def host_features() -> frozenset[str]:
    """The LLVM features (of the tables above) this machine's CPU has (or the pretended CPU's).

    RuntimeError where ``/proc/cpuinfo`` cannot tell (not Linux).
    """
    have = _host(_pretend())[1]
    if have is None:
        raise RuntimeError("cannot read this CPU's features from /proc/cpuinfo")
    return have


def host_mattr() -> list[str]:
    """``-mattr`` that turns LLVM's idea of :func:`host_cpu` into this exact CPU.

    LLVM's CPU name is a model, not a machine: a VM may report ``rocketlake`` with AMX and
    AVX512-FP16 on (a Sapphire Rapids host) and PKU off. ``+f`` for what the CPU has beyond the
    model, ``-f`` for what the model has and the CPU lacks, as ``-march=native`` does.
    """
    from bhvit_export.targets.toolchain import host_arch

    arch = host_arch()
    try:
        have = host_features()
    except RuntimeError:  # no /proc/cpuinfo (not Linux): LLVM's model of the CPU is all we know
        return []
    model = set(target_features(_arch_target(arch, host_cpu())))
    return [f"+{f}" for f in sorted(have - model)] + [f"-{f}" for f in sorted(model - have)]


def missing(required: Iterable[str], have: Iterable[str]) -> list[str]:
    """The required features not in ``have``, sorted."""
    return sorted(set(required) - set(have))


def missing_on_host(target: Any) -> list[str]:
    """What code built for ``target`` may use and this machine's CPU lacks ([] = it runs here)."""
    return missing(target_features(target), host_features())
