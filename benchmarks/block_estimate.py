"""One inference's cycles on a CPU model, from counted blocks priced by llvm-mca.

``count_inference`` runs a compiled Relax VM library with the native runner under qemu with the
block-counting plugin, once with one call of ``main`` and once with two; the difference is one
steady-state inference at one thread. ``estimate`` prices the hottest blocks (those covering
``coverage`` of the dynamic instructions) with llvm-mca for a ``-mcpu``, sums count x cycles, scales
the rest by the hot blocks' cycles per instruction, and groups the result per function (model.so's
kernels, the TVM runtime, libc) for the breakdown.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import block_cost, block_counts, symbols

#: Board clocks the estimates are converted at (GHz): Pi 4, Pi 5, a phone's little core, Orin's CPU.
CLOCKS_GHZ = {"cortex-a55": 2.0, "cortex-a72": 1.8, "cortex-a76": 2.4, "cortex-a78": 2.2}
ARM_CPUS = tuple(CLOCKS_GHZ)


@dataclass
class FunctionCost:
    lib: str
    name: str
    instructions: int = 0
    cycles: float = 0.0
    popcount_bits: int = 0  # bits through NEON ``cnt`` (binary MACs, for the XNOR/AND kernels)

    @property
    def bmac_per_cycle(self) -> float:
        return self.popcount_bits / self.cycles if self.cycles else 0.0


def _cnt_bits(asm: list[str]) -> int:
    """Bits popcounted by a block's NEON ``cnt`` instructions (128 per ``.16b``, 64 per ``.8b``)."""
    return sum(128 if ".16b" in a else 64 for a in asm if a.startswith("cnt "))


@dataclass
class Estimate:
    """One library, one CPU model: the totals and the per-function split."""

    mcpu: str
    clock_ghz: float
    instructions: int
    cycles: float
    coverage: float  # fraction of dynamic instructions in priced blocks
    functions: list[FunctionCost] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def estimated_ms(self) -> float:
        return self.cycles / (self.clock_ghz * 1e6)

    def to_json(self, top: int = 15) -> dict[str, Any]:
        return {
            "estimated_ms": self.estimated_ms, "instructions": self.instructions, "clock_ghz": self.clock_ghz,
            "cycles": self.cycles, "ipc": self.instructions / self.cycles if self.cycles else None,
            "priced_fraction": self.coverage,
            "functions": [
                {"lib": f.lib, "function": f.name, "instructions": f.instructions,
                 "ms": f.cycles / (self.clock_ghz * 1e6), "fraction": f.cycles / self.cycles if self.cycles else 0.0,
                 "bmac_per_cycle": f.bmac_per_cycle}
                for f in self.functions[:top]
            ],
            "dropped_instructions": self.dropped,
        }


def count_inference(
    runner: Path, library: Path, arch: str, *, qemu_cpu: Optional[str] = None, timeout: Optional[float] = None,
    input_shape: tuple[int, ...] = (1, 3, 224, 224), keep: bool = False,
) -> block_counts.Counts:
    """Blocks executed by one steady-state call of ``main`` at one thread, under qemu.

    ``keep``: store the two runs' counts beside ``library`` (and reuse them: a cached library is
    immutable, its name carries the hash of what built it).
    """
    with tempfile.TemporaryDirectory(prefix="bhvit-est-") as tmp:
        x = Path(tmp) / "x.npy"
        np.save(x, np.random.default_rng(0).standard_normal(input_shape).astype(np.float32))
        runs = []
        for n in (0, 1):
            cmd = [str(runner), str(library), str(x), str(Path(tmp) / "y.npy"), "--batch", str(input_shape[0]),
                   "--runs", str(n), "--warmup", "0"]
            kept = library.with_name(f"{library.name}.{qemu_cpu or arch}.runs{n + 1}.counts") if keep else None
            runs.append(block_counts.count(cmd, arch, qemu_cpu=qemu_cpu, env={"TVM_NUM_THREADS": "1"},
                                           timeout=timeout, keep=kept))
    return runs[1].minus(runs[0])


def hot_blocks(counts: block_counts.Counts, coverage: float) -> list[block_counts.Block]:
    """The fewest blocks that cover ``coverage`` of the dynamic instructions, hottest first."""
    ranked = sorted(counts.blocks, key=lambda b: -len(b.insns) * b.count)
    total, acc, out = counts.instructions, 0, []
    for b in ranked:
        if acc >= coverage * total:
            break
        out.append(b)
        acc += len(b.insns) * b.count
    return out


def estimate(
    counts: block_counts.Counts, arch: str, mcpu: str, clock_ghz: float, *, coverage: float = 0.99,
    asm: Optional[list[list[str]]] = None, library: Optional[Path] = None,
) -> Estimate:
    """Cycles of ``counts`` on ``mcpu`` at ``clock_ghz``.

    ``asm``: the hot blocks' disassembly, if done; ``library``: the model's library, shown as ``model.so``.
    """
    hot = hot_blocks(counts, coverage)
    asm = asm if asm is not None else block_cost.disassemble([b.insns for b in hot], arch)
    priced = block_cost.price(asm, arch, mcpu)
    funcs: dict[tuple[str, str], FunctionCost] = {}
    hot_cycles, hot_insns = 0.0, 0
    for b, cyc, body in zip(hot, priced.cycles, asm):
        lib, name = symbols.function_at(counts.mapping_of(b.haddr), b.haddr)
        lib = "model.so" if library is not None and lib == library.name else lib
        f = funcs.setdefault((lib, name), FunctionCost(lib, name))
        f.instructions += len(b.insns) * b.count
        f.cycles += cyc * b.count
        f.popcount_bits += _cnt_bits(body) * b.count if arch == "aarch64" else 0
        hot_cycles += cyc * b.count
        hot_insns += len(b.insns) * b.count
    total = counts.instructions
    rest = total - hot_insns
    cycles = hot_cycles + (rest * hot_cycles / hot_insns if hot_insns else 0.0)
    if rest:
        funcs[("*", "(unpriced cold blocks)")] = FunctionCost("*", "(unpriced cold blocks)", rest, cycles - hot_cycles)
    ranked = sorted(funcs.values(), key=lambda f: -f.cycles)
    return Estimate(mcpu, clock_ghz, total, cycles, hot_insns / total if total else 0.0, ranked, priced.dropped)
