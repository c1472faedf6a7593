"""The architecture record: one place for the vector facts and tile sizes kernels and schedules use.

A target resolves once into an :class:`Arch` (``arch_of``); the NEON popcount GEMM's register tile
and the float contraction's row tile come from here, not from constants sized for AVX-512's 32
zmm registers scattered through the kernels.

The NEON popcount tiles were chosen per CPU model with llvm-mca on whole output tiles of Tiny's
binary GEMM shapes (3136x512x128, 196x256x256, 49x512x2048, 784x128x1024; ``benchmarks/mca.py``
measures the chosen one, docs/bench.md has the sweep):

* Cortex-A72/A76/A78 (out of order, two 128-bit NEON pipes): 2 rows x 16 columns (8 vectors of
  weights per row word; 16 accumulators): 75% of the eor+cnt+accumulate limit on average vs 70-72%
  for the previous 4 x 8, the ``ld1r`` broadcasts amortised over more columns;
* Cortex-A55/A53 (in order): 8 rows x 4 columns: more independent rows hide the in-order ``cnt`` ->
  accumulate latency (159% of the out-of-order "limit" loop, which is no ceiling on an in-order core,
  vs 154% for 4 x 8).
"""

from __future__ import annotations

from dataclasses import dataclass

from bhvit_export.targets.kernels.target_info import TargetLike, as_target, has_vector_popcount, is_aarch64, u64_lanes

#: NEON popcount GEMM register tile (rows, uint64 columns) per Cortex model; others get the default.
NEON_POPCOUNT_TILES: dict[str, tuple[int, int]] = {
    "cortex-a53": (8, 4), "cortex-a55": (8, 4),
    "cortex-a72": (2, 16), "cortex-a76": (2, 16), "cortex-a78": (2, 16),
}
DEFAULT_NEON_POPCOUNT_TILE = (4, 8)


@dataclass(frozen=True)
class Arch:
    """What the kernels and schedules need to know about a CPU target."""

    name: str  # "avx512", "avx2", "sse2" or "neon"
    cpu: str  # the target's mcpu ("" if none)
    vector_bits: int
    vector_registers: int
    vector_popcount: bool
    dotprod: bool
    #: Register tile of the NEON popcount GEMM (rows, uint64 columns; columns a multiple of 4).
    popcount_tile: tuple[int, int]
    #: Rows of the float contraction's register tile (with two vectors of columns per row).
    float_rows: int

    @property
    def u64_lanes(self) -> int:
        return self.vector_bits // 64

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32


def arch_of(target: TargetLike) -> Arch:
    """The record of an llvm CPU target (its host, for CUDA targets with an llvm host)."""
    tgt = as_target(target)
    if tgt.kind.name != "llvm" and tgt.host is not None:
        tgt = tgt.host
    cpu = str(tgt.attrs.get("mcpu", ""))
    lanes = u64_lanes(tgt)
    if is_aarch64(tgt):
        from bhvit_export.targets.kernels.neon_gemm import has_dotprod

        return Arch("neon", cpu, 128, 32, True, has_dotprod(tgt),
                    NEON_POPCOUNT_TILES.get(cpu, DEFAULT_NEON_POPCOUNT_TILE), float_rows=8)
    name = {8: "avx512", 4: "avx2"}.get(lanes, "sse2")
    registers = 32 if lanes == 8 else 16
    # Float rows: 8 rows x 2 vectors = 16 accumulators, half of AVX-512's (and NEON's) registers.
    return Arch(name, cpu, 64 * lanes, registers, has_vector_popcount(tgt), False,
                DEFAULT_NEON_POPCOUNT_TILE, float_rows=8)
