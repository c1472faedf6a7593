"""Cycles per execution of each basic block on a CPU model: llvm-mc disassembles, llvm-mca simulates.

Every block becomes one llvm-mca code region (``# LLVM-MCA-BEGIN``/``END``), so one llvm-mca run per
CPU model prices all blocks. A region's cost is llvm-mca's ``Total Cycles / Iterations``: the block
run back to back in its steady state, with the CPU model's ports, latencies and dependency chains
(the basic-block throughput that BHive and uiCA measure). What llvm-mca does not model: cache and
memory stalls (every load hits L1), branch mispredictions, and the overlap between consecutive
*different* blocks. Instructions llvm-mca cannot schedule (``udf``, system instructions) are
dropped from their block and reported.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

from bhvit_export.errors import TargetError

#: Decoding every extension our code or the libraries may use; scheduling is per ``-mcpu``.
_MC_ATTRS = {"aarch64": ["-mattr=+v8.4a,+dotprod,+fullfp16,+crypto,+sve2,+lse,+rcpc,+i8mm,+bf16"], "x86_64": []}
_TRIPLES = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}
_LINE_ERR = re.compile(r"^<stdin>:(\d+):\d+: (?:warning|error): (.*)$")
_REGION = re.compile(r"^\[(\d+)\] Code Region(?: - (\S+))?")
_NOTE = re.compile(r"^note: instruction:\s*(.*)$")


@dataclass
class Priced:
    """Cycles per execution of each block (by index), and what could not be priced."""

    cycles: list[float]
    dropped: dict[str, int] = field(default_factory=dict)  # instruction -> blocks it was dropped from


def disassemble(blocks: Sequence[Sequence[bytes]], arch: str) -> list[list[str]]:
    """Assembly text of each block's instructions (undecodable ones left out), in one llvm-mc run."""
    lines, owner = [], []
    for i, insns in enumerate(blocks):
        for raw in insns:
            lines.append(" ".join(f"0x{b:02x}" for b in raw))
            owner.append(i)
    proc = subprocess.run(
        ["llvm-mc", "--disassemble", f"-triple={_TRIPLES[arch]}", *_MC_ATTRS[arch]],
        input="\n".join(lines) + "\n", capture_output=True, text=True,
    )
    bad = {int(m.group(1)) - 1 for ln in proc.stderr.splitlines() if (m := _LINE_ERR.match(ln))}
    text = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip() and not ln.strip().startswith(".")]
    good = [k for k in range(len(lines)) if k not in bad]
    if len(text) != len(good):
        raise TargetError(f"llvm-mc decoded {len(text)} of {len(good)} instructions: cannot align the blocks")
    out: list[list[str]] = [[] for _ in blocks]
    for k, asm in zip(good, text):
        out[owner[k]].append(" ".join(asm.split()))
    return out


def _mca_input(blocks: Sequence[Sequence[str]], skip: set[str]) -> str:
    parts = []
    for i, asm in enumerate(blocks):
        body = [a for a in asm if a not in skip]
        if body:
            parts += [f"# LLVM-MCA-BEGIN b{i}", *body, f"# LLVM-MCA-END b{i}"]
    return "\n".join(parts) + "\n"


def price(blocks: Sequence[Sequence[str]], arch: str, mcpu: str, *, iterations: int = 100) -> Priced:
    """Cycles per execution of each block on ``mcpu`` (0 for a block with nothing llvm-mca can price)."""
    skip: set[str] = set()
    for _ in range(50):
        proc = subprocess.run(
            ["llvm-mca", f"-mtriple={_TRIPLES[arch]}", f"-mcpu={mcpu}", f"-iterations={iterations}",
             "-dispatch-stats=false", "-instruction-info=false", "-resource-pressure=false"],
            input=_mca_input(blocks, skip), capture_output=True, text=True,
        )
        if proc.returncode == 0:
            break
        notes = [m.group(1).strip().replace("\t", " ") for ln in proc.stderr.splitlines() if (m := _NOTE.match(ln))]
        if not notes or notes[0] in skip:
            last = (proc.stderr.strip().splitlines() or ["?"])[0]
            raise TargetError(f"llvm-mca -mcpu={mcpu} failed: {last}")
        skip.add(" ".join(notes[0].split()))
        skip.add(notes[0])
    else:
        raise TargetError(f"llvm-mca -mcpu={mcpu}: too many unsupported instructions")
    cycles = [0.0] * len(blocks)
    region, iters = None, iterations
    for ln in proc.stdout.splitlines():
        if m := _REGION.match(ln):
            region = int(m.group(2)[1:]) if m.group(2) else None
        elif ln.startswith("Iterations:"):
            iters = int(ln.split()[1])
        elif ln.startswith("Total Cycles:") and region is not None:
            cycles[region] = float(ln.split()[2]) / iters
    dropped: dict[str, int] = {}
    for asm in blocks:
        for a in set(asm) & skip:
            dropped[a] = dropped.get(a, 0) + 1
    return Priced(cycles, dropped)
