"""CPU features (``targets/cpu_features.py``): LLVM names <-> Linux flags, what a build needs, the host.

The gate of the kernel tests and of ``verify`` rests on these: a build's feature list holds ISA
extensions only (no LLVM tuning flags), Linux's spellings map onto LLVM's (``avx512_vpopcntdq`` is
``avx512vpopcntdq``, ``asimddp`` is ``dotprod``), and the host target runs on the host.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from bhvit_export.targets import cpu_features as cf  # noqa: E402
from bhvit_export.targets.kernels.target_info import AARCH64_CORTEX_A72, X86_SAPPHIRERAPIDS, host_target, runs_on_host  # noqa: E402

X86_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx avx2 avx512f avx512_vpopcntdq amx_tile\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 asimddp cpuid\nCPU part\t: 0xd0b\n"


def test_linux_spellings_map_to_llvm_names() -> None:
    arch, x86 = cf.parse_cpuinfo(X86_CPUINFO)
    assert arch == "x86_64" and {"avx512vpopcntdq", "amx-tile", "sse3", "sse4.1", "crc32"} <= x86
    assert "avx512fp16" not in x86
    arch, arm = cf.parse_cpuinfo(ARM_CPUINFO)
    assert arch == "aarch64" and arm == {"fp-armv8", "neon", "crc", "dotprod"}
    assert cf.parse_report("aarch64: fp asimd asimddp") == ("aarch64", frozenset({"fp-armv8", "neon", "dotprod"}))
    assert cf.parse_report("") is None and cf.parse_cpuinfo("no flags here") is None


def test_zen4_lacks_what_sapphirerapids_code_may_use() -> None:
    spr = cf.target_features(X86_SAPPHIRERAPIDS)
    zen4 = cf.target_features({"kind": "llvm", "mcpu": "znver4"})
    assert {"avx512vpopcntdq", "avx512bitalg", "avx512vnni"} <= set(spr) & set(zen4)
    assert cf.missing(spr, zen4) == ["amx-bf16", "amx-int8", "amx-tile", "avx512fp16", "avxvnni"]
    assert not {"prefer-256-bit", "fast-gather", "aes", "pku"} & set(spr)  # tuning, crypto, system


def test_aarch64_needs_neon_not_crypto() -> None:
    """LLVM's cortex-a72 has aes/sha2, a Raspberry Pi 4 does not: only what codegen uses counts."""
    assert cf.target_features(AARCH64_CORTEX_A72) == ["crc", "fp-armv8", "neon"]


def test_host_target_runs_on_the_host() -> None:
    tgt = host_target()
    assert str(tgt.attrs["mcpu"]) == cf.host_cpu()
    assert runs_on_host(tgt) == [] and set(cf.target_features(tgt)) == cf.host_features()


def test_pretend_cpu_is_what_the_host_reports(monkeypatch) -> None:
    monkeypatch.setenv(cf.PRETEND_ENV, "znver4")
    assert cf.host_cpu() == "znver4" and "avx512fp16" not in cf.host_features()
    assert host_target().attrs["mcpu"] == "znver4" and runs_on_host(X86_SAPPHIRERAPIDS)


@settings(max_examples=30, deadline=None)
@given(
    flags=st.sets(st.sampled_from(sorted(set(cf.X86_FEATURES.values())))),
    need=st.sets(st.sampled_from(sorted(cf.X86_FEATURES))),
)
def test_missing_is_exactly_what_the_flags_do_not_give(flags: set[str], need: set[str]) -> None:
    have = cf.from_linux_flags("x86_64", flags)
    assert have == {f for f, linux in cf.X86_FEATURES.items() if linux in flags}
    assert cf.missing(need, have) == sorted(f for f in need if cf.X86_FEATURES[f] not in flags)
