"""The architecture records: every fact about a CPU architecture, in one place, reached through one lookup.

An :class:`ArchRecord` per architecture we build for holds what the rest of the code used to decide
with string comparisons: its LLVM triple, the cross compiler that links for it, the qemu-user that
runs it and the sysroot qemu needs, its ELF machine number, the platform tag of its TVM wheels, its
SIMD levels (registers, lanes, the popcount and dot instructions and the LLVM features that enable
them), the kernel variants it has, and the register tiles the kernels and schedules use. Adding an
architecture is one more entry in :data:`ARCHES` (``tests/targets/test_arch.py`` checks that every
record is complete and that the lookups read nothing else).

:func:`arch_record` (a name such as ``aarch64``/``arm64``) and :func:`arch_for_triple` (an LLVM
triple) find a record; :func:`arch_of` resolves a TVM target once into an :class:`Arch`: its record
plus the SIMD level and instructions its mcpu/mattr enable.

The NEON popcount tiles were chosen per CPU model with llvm-mca on whole output tiles of Tiny's
binary GEMM shapes (3136x512x128, 196x256x256, 49x512x2048, 784x128x1024; ``benchmarks/mca.py``
measures the chosen one, docs/bench.md has the sweep):

* Cortex-A72/A76/A78 (out of order, two 128-bit NEON pipes): 2 rows x 16 columns (8 vectors of
  weights per row word; 16 accumulators): 75% of the eor+cnt+accumulate limit on average vs 70-72%
  for the previous 4 x 8, the ``ld1r`` broadcasts amortised over more columns;
* Cortex-A55/A53 (in order): 8 rows x 4 columns: more independent rows hide the in-order ``cnt`` ->
  accumulate latency (159% of the out-of-order "limit" loop, which is no ceiling on an in-order core,
  vs 154% for 4 x 8).

This module imports no TVM at load time (the CLI reads the names for its options); only
:func:`arch_of` asks LLVM about a target's features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Optional

from bhvit_export.errors import TargetError

if TYPE_CHECKING:
    from bhvit_export.targets.kernels.target_info import TargetLike

#: Kernel variant: the explicit NEON popcount GEMM (``targets/kernels/neon_gemm.py``), for N >= 4.
NEON_POPCOUNT_GEMM = "neon-popcount-gemm"
#: Kernel variant: the TE compute with the shared CPU schedule (every CPU has it).
TE_SCHEDULED = "te-scheduled"


@dataclass(frozen=True)
class Tool:
    """An external program: the executable to look for and how a user gets it."""

    executable: str
    install: str


@dataclass(frozen=True)
class VectorUnit:
    """One SIMD level of an architecture: what a target whose features include ``requires`` has."""

    name: str  # "avx512", "avx2", "sse2", "neon"
    bits: int
    registers: int
    #: LLVM features that select this level (empty: the architecture's baseline).
    requires: tuple[str, ...]
    #: The vector popcount instruction, or "" where popcount is scalar or a nibble table.
    popcount: str = ""
    #: LLVM features the popcount instruction needs beyond ``requires`` (empty: always there).
    popcount_requires: tuple[str, ...] = ()
    #: The byte dot-product instruction the popcount GEMM can accumulate with, or "".
    dot: str = ""
    dot_requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchRecord:
    """Everything about one CPU architecture (see the module docstring)."""

    name: str  # how we spell it: "x86_64", "aarch64"
    aliases: tuple[str, ...]  # other spellings (``platform.machine()``, Debian): "amd64", "arm64"
    description: str  # for ``bhvit-export targets``
    triple: str  # the LLVM triple we build for
    triple_prefixes: tuple[str, ...]  # triples that mean this architecture
    elf_machine: int  # ELF e_machine
    wheel_platform: str  # pip's --platform for its TVM runtime wheels
    cross_compiler: Tool  # links a library or program for it on another host
    qemu: Tool  # qemu-user that runs its programs on another host
    sysroot: Path  # the glibc and loader qemu needs (-L)
    cpuinfo_key: str  # the /proc/cpuinfo line listing its features
    #: --mcpu when none is given; "" means this machine's CPU (only on a host of this arch).
    default_cpu: str
    #: mattr every target of ours gets; CPUs in ``dotprod_cpus`` also get their SIMD level's ``dot_requires``.
    base_mattr: tuple[str, ...]
    dotprod_cpus: tuple[str, ...]
    checked_cpus: tuple[str, ...]  # CPUs our kernels were checked on (--mcpu warns for none; listed first)
    vector_units: tuple[VectorUnit, ...]  # best first; the last is the baseline
    kernel_variants: tuple[str, ...]  # of NEON_POPCOUNT_GEMM / TE_SCHEDULED
    #: Register tile of the popcount GEMM (rows, uint64 columns) per CPU model, and for the others.
    popcount_tiles: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    default_popcount_tile: tuple[int, int] = (4, 8)
    #: Rows of the float contraction's register tile (with two vectors of columns per row).
    float_rows: int = 8
    #: Rows of the register tile of the scheduled TE popcount kernels (GEMM, conv, GSB context;
    #: columns: two vectors, :func:`bhvit_export.targets.kernels.popcount_gemm.schedule_popcount_gemm`).
    popcount_rows: int = 4

    def popcount_tile(self, cpu: str) -> tuple[int, int]:
        return self.popcount_tiles.get(cpu, self.default_popcount_tile)


X86_64 = ArchRecord(
    name="x86_64",
    aliases=("amd64",),
    description="this machine's x86-64 CPU (LLVM's name for it and its exact features), or --mcpu",
    triple="x86_64-linux-gnu",
    triple_prefixes=("x86_64",),
    elf_machine=62,
    wheel_platform="manylinux_2_28_x86_64",
    cross_compiler=Tool("x86_64-linux-gnu-g++", "install it with `apt-get install g++-x86-64-linux-gnu`"),
    qemu=Tool("qemu-x86_64", "install it with `apt-get install qemu-user`"),
    sysroot=Path("/usr/x86_64-linux-gnu"),
    cpuinfo_key="flags",
    default_cpu="",
    base_mattr=(),
    dotprod_cpus=(),
    checked_cpus=("haswell", "sapphirerapids"),
    vector_units=(
        # 8 rows x 2 vectors = 16 float accumulators, half of AVX-512's 32 zmm registers.
        VectorUnit("avx512", 512, 32, ("avx512f",), "vpopcntq", ("avx512vpopcntdq",)),
        VectorUnit("avx2", 256, 16, ("avx2",)),  # popcount via vpshufb nibble tables
        VectorUnit("sse2", 128, 16, ()),
    ),
    kernel_variants=(TE_SCHEDULED,),
)

AARCH64 = ArchRecord(
    name="aarch64",
    aliases=("arm64",),
    description="64-bit Arm Linux, Cortex-A72 unless --mcpu",
    triple="aarch64-linux-gnu",
    triple_prefixes=("aarch64", "arm64"),
    elf_machine=183,
    wheel_platform="manylinux_2_28_aarch64",  # tvm's aarch64 wheels are manylinux_2_28
    cross_compiler=Tool("aarch64-linux-gnu-g++", "install it with `apt-get install g++-aarch64-linux-gnu`"),
    qemu=Tool("qemu-aarch64", "install it with `apt-get install qemu-user`"),
    # Debian/Ubuntu's libc6-dev-arm64-cross (pulled in by g++-aarch64-linux-gnu) puts glibc and the
    # loader here; qemu-user needs it as -L since binfmt_misc is not relied on.
    sysroot=Path("/usr/aarch64-linux-gnu"),
    cpuinfo_key="Features",
    default_cpu="cortex-a72",
    base_mattr=("+neon",),
    dotprod_cpus=("cortex-a55", "cortex-a76", "cortex-a78"),
    checked_cpus=("cortex-a53", "cortex-a55", "cortex-a72", "cortex-a76", "cortex-a78"),
    # 128-bit NEON, 32 registers; SVE is not used. cnt is always there, udot with +dotprod.
    vector_units=(VectorUnit("neon", 128, 32, (), "cnt", (), "udot", ("dotprod",)),),
    kernel_variants=(NEON_POPCOUNT_GEMM, TE_SCHEDULED),
    popcount_tiles=MappingProxyType({
        "cortex-a53": (8, 4), "cortex-a55": (8, 4),
        "cortex-a72": (2, 16), "cortex-a76": (2, 16), "cortex-a78": (2, 16),
    }),
)

#: The registry: every architecture we build for, by name.
ARCHES: Mapping[str, ArchRecord] = MappingProxyType({r.name: r for r in (X86_64, AARCH64)})


def arch_record(name: str) -> ArchRecord:
    """The record of ``name`` (its own name or an alias, any case); a TargetError for anything else."""
    key = name.lower()
    for rec in ARCHES.values():
        if key == rec.name or key in rec.aliases:
            return rec
    raise TargetError(f"unsupported architecture '{name}': expected one of {', '.join(ARCHES)}")


def arch_for_triple(triple: str) -> Optional[ArchRecord]:
    """The record whose triples start like ``triple``; None for other (or empty) triples."""
    for rec in ARCHES.values():
        if triple.startswith(rec.triple_prefixes):
            return rec
    return None


def arch_for_elf_machine(machine: int) -> Optional[ArchRecord]:
    """The record of an ELF ``e_machine``; None for architectures we do not build for."""
    return next((rec for rec in ARCHES.values() if rec.elf_machine == machine), None)


@dataclass(frozen=True)
class Arch:
    """A target resolved against its record: what the kernels and schedules need to know about it."""

    record: ArchRecord
    cpu: str  # the target's mcpu ("" if none)
    unit: VectorUnit  # the best SIMD level its features enable
    vector_popcount: bool
    dotprod: bool

    @property
    def name(self) -> str:
        """The SIMD level's name: "avx512", "avx2", "sse2" or "neon"."""
        return self.unit.name

    @property
    def vector_bits(self) -> int:
        return self.unit.bits

    @property
    def vector_registers(self) -> int:
        return self.unit.registers

    @property
    def u64_lanes(self) -> int:
        return self.unit.bits // 64

    @property
    def f32_lanes(self) -> int:
        return self.unit.bits // 32

    @property
    def popcount_tile(self) -> tuple[int, int]:
        """Register tile of the popcount GEMM (rows, uint64 columns; columns a multiple of 4)."""
        return self.record.popcount_tile(self.cpu)

    @property
    def float_rows(self) -> int:
        return self.record.float_rows

    @property
    def popcount_rows(self) -> int:
        return self.record.popcount_rows

    def has_variant(self, variant: str) -> bool:
        return variant in self.record.kernel_variants


def target_record(target: "TargetLike") -> ArchRecord:
    """The record of an llvm target (its host for a CUDA target): by triple, else by ``feature.is_*``,
    else the x86-64 default LLVM assumes for a triple-less target."""
    from bhvit_export.targets.kernels.target_info import as_target

    tgt = as_target(target)
    if tgt.kind.name != "llvm" and tgt.host is not None:
        tgt = tgt.host
    rec = arch_for_triple(str(tgt.attrs.get("mtriple", "")))
    if rec is not None:
        return rec
    # TVM sets feature.is_<arch> from LLVM for the triple it builds for.
    return next((r for r in ARCHES.values() if bool(tgt.attrs.get(f"feature.is_{r.name}", False))), X86_64)


def cpu_variant(target: "TargetLike", variant: str) -> bool:
    """True when ``target`` is an llvm CPU target whose record has the kernel ``variant`` (a CUDA
    target's kernels are the GPU ones, whatever its host)."""
    from bhvit_export.targets.kernels.target_info import as_target

    tgt = as_target(target)
    return tgt.kind.name == "llvm" and variant in target_record(tgt).kernel_variants


def arch_of(target: "TargetLike") -> Arch:
    """The resolved record of an llvm CPU target (its host, for CUDA targets with an llvm host)."""
    from bhvit_export.targets.kernels.target_info import as_target, has_features

    tgt = as_target(target)
    if tgt.kind.name != "llvm" and tgt.host is not None:
        tgt = tgt.host
    rec = target_record(tgt)
    unit = next(u for u in rec.vector_units if not u.requires or has_features(tgt, *u.requires))
    popcount = bool(unit.popcount) and (not unit.popcount_requires or has_features(tgt, *unit.popcount_requires))
    dot = bool(unit.dot) and (not unit.dot_requires or has_features(tgt, *unit.dot_requires))
    return Arch(rec, str(tgt.attrs.get("mcpu", "")), unit, popcount, dot)
