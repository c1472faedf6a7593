"""The architecture records (``targets/arch.py``): complete, and the only place architecture facts live.

Adding an architecture must be data entry: one more :class:`~bhvit_export.targets.arch.ArchRecord` in
``ARCHES``. These tests check that every record fills every field, that the lookups find a new
record without any other change (a made-up riscv64 entry), and that the modules which used to
compare architecture strings no longer hold any of the records' facts as literals.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from bhvit_export.errors import TargetError
from bhvit_export.targets import arch
from bhvit_export.targets.arch import AARCH64, ARCHES, X86_64, ArchRecord, Tool, VectorUnit

REPO = Path(__file__).resolve().parents[2]
#: The modules that used to decide architecture questions with string comparisons.
READERS = [
    "targets/target_spec.py", "targets/kernels/target_info.py", "targets/toolchain.py", "targets/runtime_libs.py",
    "targets/catalog.py", "targets/cpu_features.py", "targets/build_cuda.py", "targets/mcpu.py",
    "targets/kernels/bgemm.py", "targets/kernels/and_popcount.py", "bhvit_export/compile.py", "bhvit_export/cli.py",
]
#: Fields that may be empty by design (x86 has no default CPU: it means this machine's; no base mattr).
MAY_BE_EMPTY = {"default_cpu", "base_mattr", "dotprod_cpus", "popcount_tiles"}

RISCV = dataclasses.replace(
    AARCH64,
    name="riscv64", aliases=("riscv",), description="64-bit RISC-V Linux", triple="riscv64-linux-gnu",
    triple_prefixes=("riscv64",), elf_machine=243, wheel_platform="manylinux_2_28_riscv64",
    cross_compiler=Tool("riscv64-linux-gnu-g++", "install it with `apt-get install g++-riscv64-linux-gnu`"),
    qemu=Tool("qemu-riscv64", "install it with `apt-get install qemu-user`"), sysroot=Path("/usr/riscv64-linux-gnu"),
    cpuinfo_key="isa", default_cpu="generic-rv64", base_mattr=("+v",), dotprod_cpus=(), checked_cpus=("generic-rv64",),
    vector_units=(VectorUnit("rvv", 128, 32, ()),), kernel_variants=(arch.TE_SCHEDULED,), popcount_tiles={},
)


@pytest.mark.parametrize("rec", list(ARCHES.values()), ids=list(ARCHES))
def test_every_record_has_every_fact(rec: ArchRecord) -> None:
    for f in dataclasses.fields(ArchRecord):
        value = getattr(rec, f.name)
        if f.name not in MAY_BE_EMPTY:
            assert value not in ("", (), None, {}), f"{rec.name}.{f.name} is empty"
    assert rec.triple.startswith(rec.triple_prefixes)
    assert rec.cross_compiler.executable and rec.cross_compiler.install.startswith("install")
    assert rec.qemu.executable.startswith("qemu-")
    assert rec.wheel_platform.endswith(rec.name)
    assert rec.vector_units[-1].requires == (), "the last SIMD level is the baseline"
    assert all(u.bits % 64 == 0 and u.registers > 0 for u in rec.vector_units)
    assert set(rec.kernel_variants) <= {arch.NEON_POPCOUNT_GEMM, arch.TE_SCHEDULED}
    assert all(nr % 4 == 0 for _mr, nr in [*rec.popcount_tiles.values(), rec.default_popcount_tile])


def test_records_do_not_share_identities() -> None:
    for attr in ("triple", "elf_machine", "wheel_platform", "cpuinfo_key"):
        values = [getattr(r, attr) for r in ARCHES.values()]
        assert len(set(values)) == len(values), attr


def test_every_record_has_a_cpu_feature_table_and_a_short_name() -> None:
    from bhvit_export.targets.catalog import SHORT_NAMES as LISTED
    from bhvit_export.targets.cpu_features import TABLES
    from bhvit_export.targets.target_spec import SHORT_NAMES

    assert set(TABLES) == set(ARCHES)
    assert set(ARCHES) <= set(SHORT_NAMES) and set(ARCHES) <= set(LISTED)


def test_lookups_find_a_new_record_without_other_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    from bhvit_export.targets import toolchain

    monkeypatch.setattr(arch, "ARCHES", {**ARCHES, RISCV.name: RISCV})
    assert arch.arch_record("RISCV") is RISCV and toolchain.normalize_arch("riscv64") == "riscv64"
    assert arch.arch_for_triple("riscv64-unknown-linux-gnu") is RISCV
    assert arch.arch_for_elf_machine(243) is RISCV
    assert arch.arch_for_triple("aarch64-linux-gnu") is AARCH64 and arch.arch_for_triple("") is None
    assert arch.arch_record("arm64") is AARCH64 and arch.arch_record("amd64") is X86_64


def test_elf_and_tool_lookups_read_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bhvit_export.targets import toolchain

    monkeypatch.setattr(arch, "ARCHES", {**ARCHES, RISCV.name: RISCV})
    elf = tmp_path / "lib.so"
    elf.write_bytes(b"\x7fELF\x02\x01" + bytes(12) + (243).to_bytes(2, "little"))
    assert toolchain.elf_arch(elf) == "riscv64"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match="riscv64-linux-gnu-g\\+\\+ not found: install it with `apt-get install g\\+\\+-riscv64"):
        toolchain.compiler("riscv64")
    with pytest.raises(TargetError, match="qemu-riscv64 not found"):
        toolchain.qemu_command("riscv64")


def test_unknown_architecture_lists_the_records() -> None:
    with pytest.raises(TargetError, match="unsupported architecture 'mips': expected one of x86_64, aarch64"):
        arch.arch_record("mips")


@pytest.mark.parametrize(
    ("target", "unit", "lanes", "popcount", "dotprod", "tile"),
    [
        ({"kind": "llvm", "mcpu": "sapphirerapids"}, "avx512", 8, True, False, (4, 8)),
        ({"kind": "llvm", "mcpu": "haswell"}, "avx2", 4, False, False, (4, 8)),
        ({"kind": "llvm", "mcpu": "x86-64"}, "sse2", 2, False, False, (4, 8)),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}, "neon", 2, True, False, (2, 16)),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55", "mattr": ["+neon", "+dotprod"]}, "neon", 2, True, True, (8, 4)),
    ],
)
def test_arch_of_resolves_the_simd_level(target: dict, unit: str, lanes: int, popcount: bool, dotprod: bool, tile: tuple) -> None:
    pytest.importorskip("tvm")
    a = arch.arch_of(target)
    assert (a.name, a.u64_lanes, a.vector_popcount, a.dotprod, a.popcount_tile) == (unit, lanes, popcount, dotprod, tile)
    assert a.f32_lanes == 2 * lanes and a.float_rows == 8


def _facts() -> set[object]:
    out: set[object] = set()
    for r in ARCHES.values():
        out |= {r.triple, r.wheel_platform, r.cross_compiler.executable, r.qemu.executable, str(r.sysroot), r.cpuinfo_key}
        out |= {f"{r.name}-linux-gnu"}
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


@pytest.mark.parametrize("path", READERS)
def test_readers_hold_no_architecture_facts(path: str) -> None:
    """No triple, wheel tag, tool name or sysroot as a literal, and no comparison with an
    architecture name: those questions go to the records."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    docs, facts = _docstrings(tree), _facts()
    names = {n for r in ARCHES.values() for n in (r.name, *r.aliases)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            assert node.value not in facts, f"{path}:{node.lineno}: {node.value!r} belongs in targets/arch.py"
        if isinstance(node, ast.Compare):
            consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
            assert not names & set(consts), f"{path}:{node.lineno}: compares with an architecture name"
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith":
            consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
            assert not names & consts, f"{path}:{node.lineno}: matches an architecture prefix"


def test_a_cuda_target_gets_the_gpu_kernels_whatever_its_host() -> None:
    """The Jetson's host is aarch64, but its kernels are CUDA's: no NEON variant, not "aarch64"."""
    pytest.importorskip("tvm")
    from bhvit_export.targets.build_cuda import JETSON_ORIN
    from bhvit_export.targets.kernels.target_info import has_vector_popcount, is_aarch64

    assert arch.target_record(JETSON_ORIN) is AARCH64  # what links and runs its host code
    assert not arch.cpu_variant(JETSON_ORIN, arch.NEON_POPCOUNT_GEMM) and not is_aarch64(JETSON_ORIN)
    assert not has_vector_popcount(JETSON_ORIN)
    assert arch.cpu_variant({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, arch.NEON_POPCOUNT_GEMM)
