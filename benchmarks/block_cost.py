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


#: An instruction that never occurs in real code, put between blocks to split llvm-mc's output:
#: ``udf #0x1234`` and ``movabs $0x1234567812345678, %r15``, with how they print.
_MARKERS = {
    "aarch64": (bytes.fromhex("34120000"), ("udf #4660", "udf #0x1234")),
    "x86_64": (bytes.fromhex("49bf7856341278563412"), ("movabsq $1311768465173141112, %r15",)),
}


def _llvm_mc(blocks: Sequence[Sequence[bytes]], arch: str) -> list[list[str]]:
    marker, printed = _MARKERS[arch]
    lines = []
    for insns in blocks:
        lines += [" ".join(f"0x{b:02x}" for b in raw) for raw in insns]
        lines.append(" ".join(f"0x{b:02x}" for b in marker))
    proc = subprocess.run(
        ["llvm-mc", "--disassemble", f"-triple={_TRIPLES[arch]}", *_MC_ATTRS[arch]],
        input="\n".join(lines) + "\n", capture_output=True, text=True,
    )
    out: list[list[str]] = [[]]
    for ln in proc.stdout.splitlines():
        asm = " ".join(ln.split("#")[0].split()) if arch == "x86_64" else " ".join(ln.split("//")[0].split())
        if not asm or asm.startswith("."):
            continue
        if asm in printed:
            out.append([])
        else:
            out[-1].append(asm)
    return out[:-1]


def disassemble(blocks: Sequence[Sequence[bytes]], arch: str) -> list[list[str]]:
    """Assembly text of each block's instructions (undecodable bytes left out).

    One llvm-mc run with a marker instruction between blocks, so a prefix printed on a line of its
    own (x86 ``lock``) cannot shift one block's text into the next; where undecodable bytes swallow
    a marker (an extension llvm-mc 14 lacks), one run per block instead.
    """
    out = _llvm_mc(blocks, arch)
    if len(out) == len(blocks):
        return out
    out = [(_llvm_mc([b], arch) or [[]])[0] for b in blocks]
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
