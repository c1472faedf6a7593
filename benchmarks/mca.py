"""ARM evidence without ARM hardware: llvm-mca on the loops of our aarch64 binary GEMM.

For each CPU model the kernel is compiled for that ``mcpu`` (with ``+dotprod`` where
``targets/target_spec.py`` adds it: A55/A76/A78), two loops of its assembly are cut out and
llvm-mca simulates them: cycles per iteration -> binary MACs per cycle (each ``cnt`` covers 128 bits
= 128 binary MACs):

* **K loop**: the smallest loop that contains NEON ``cnt`` (one K word of a register tile; when
  LLVM unrolls K completely this is the tile loop);
* **tile**: the smallest loop that contains ``cnt`` and a store, i.e. one whole output tile with
  its accumulator init, widening and epilogue: the steady state of the kernel for that K.

The **NEON limit** is llvm-mca's figure, on the same CPU model, for the ideal loop that does only the
unavoidable work per 128 bits: ``eor`` (XNOR), ``cnt`` and one accumulate (``uadalp`` into 16-bit
lanes, or ``udot`` into 32-bit lanes on dotprod CPUs), with no loads. ``--generic`` measures the
TE-scheduled kernel instead (uint64 accumulation, the pre-NEON-kernel baseline). Both Debian's
``llvm-mca`` (LLVM 14) and ``llvm-mca-16`` are run when installed: their CPU models differ.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from typing import Any, Optional, Sequence

from bhvit_export.errors import TargetError

CPUS = ("cortex-a72", "cortex-a76")
#: CPUs with the dotprod extension (``udot``), as ``targets/target_spec.py`` sets ``+dotprod``.
DOTPROD_CPUS = ("cortex-a55", "cortex-a76", "cortex-a78")
#: (M, N, K): Tiny stage-1 MLP fc1, stage-3 attention projection, stage-4 MLP fc2.
SHAPES = ((3136, 512, 128), (196, 256, 256), (49, 512, 2048))
_LABEL = re.compile(r"^(\.LBB\w+):")
_BRANCH = re.compile(r"^\s+(b\.\w+|b|cbnz|cbz|tbnz|tbz)\s+.*?(\.LBB\w+)\s*$")


def mca_tools() -> list[str]:
    """Every llvm-mca on PATH (``llvm-mca`` and versioned ``llvm-mca-N``), oldest first."""
    names = ["llvm-mca"] + [f"llvm-mca-{v}" for v in range(14, 21)]
    found, seen = [], set()
    for name in names:
        path = shutil.which(name)
        if path and (real := os.path.realpath(path)) not in seen:
            seen.add(real)
            found.append(name)
    if not found:
        raise TargetError("llvm-mca not found: install it with `apt-get install llvm`")
    return found


def _llvm_mca() -> str:
    return mca_tools()[0]


def inner_loop(asm: str, *, with_store: bool = False) -> list[str]:
    """Instructions of the smallest ``label: ... branch label`` loop that contains ``cnt``.

    ``with_store``: the smallest such loop that also stores (the loop over output tiles).
    """
    lines = asm.splitlines()
    best: list[str] = []
    starts: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        if m:
            starts[m.group(1)] = i
        b = _BRANCH.match(line)
        if b and b.group(2) in starts:
            body = [
                ln.strip() for ln in lines[starts[b.group(2)] + 1 : i + 1]
                if ln.startswith("\t") and not ln.strip().startswith((".", "//"))
            ]
            stores = not with_store or any(ln.startswith(("str", "stp", "st1")) for ln in body)
            if any(ln.startswith("cnt") for ln in body) and stores and (not best or len(body) < len(best)):
                best = body
    if not best:
        raise ValueError("no loop with NEON cnt found in the assembly")
    return best


def ideal_loop(vectors: int = 8, *, dotprod: bool = False) -> list[str]:
    """Per 128-bit vector: eor, cnt, uadalp into 16-bit accumulators (what LCE's kernels do).

    ``dotprod``: ``udot`` of the counts with a ones vector (v24) into 32-bit lanes instead.
    """
    body = []
    for v in range(vectors):
        acc = f"udot v{8 + v % 8}.4s, v{16 + v}.16b, v24.16b" if dotprod else f"uadalp v{8 + v % 8}.8h, v{16 + v}.16b"
        body += [f"eor v{16 + v}.16b, v{v % 4}.16b, v{4 + v % 4}.16b", f"cnt v{16 + v}.16b, v{16 + v}.16b", acc]
    return body


def mca(body: Sequence[str], mcpu: str, iterations: int = 200, *, tool: str = "", dotprod: bool = False) -> dict[str, float]:
    """llvm-mca's cycles per iteration and IPC for ``body`` on ``mcpu``."""
    attrs = ["-mattr=+dotprod"] if dotprod else []
    proc = subprocess.run(
        [tool or _llvm_mca(), "-mtriple=aarch64-linux-gnu", f"-mcpu={mcpu}", f"-iterations={iterations}", *attrs],
        input="\n".join(body) + "\n",
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise TargetError(f"llvm-mca failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    cycles = float(re.search(r"Total Cycles:\s+(\d+)", proc.stdout).group(1))
    ipc = float(re.search(r"IPC:\s+([\d.]+)", proc.stdout).group(1))
    return {"cycles_per_iteration": cycles / iterations, "ipc": ipc}


def _target(cpu: str) -> dict[str, Any]:
    mattr = ["+neon"] + (["+dotprod"] if cpu in DOTPROD_CPUS else [])
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu, "mattr": mattr}


def _kernel_asm(m: int, n: int, k: int, cpu: str, generic: bool) -> str:
    from bhvit_export.targets.kernels import bgemm
    from bhvit_export.targets.kernels.build import assembly

    target = _target(cpu)
    if generic:
        mod = bgemm.schedule_bgemm(bgemm.make_bgemm(m, n, k), target)
    else:
        mod = bgemm.bgemm_module(m, n, k, target)
    return assembly(mod, target)


def _cnt(body: Sequence[str]) -> int:
    return sum(ln.startswith("cnt") for ln in body)


def _cycles(body: Sequence[str], cpu: str, tool: str) -> float:
    return mca(body, cpu, tool=tool, dotprod=cpu in DOTPROD_CPUS)["cycles_per_iteration"] if body else 0.0


def cnt_per_tile_word(m: int, n: int, generic: bool, cpu: str = "cortex-a72") -> int:
    """NEON ``cnt`` per K word of one register tile (rows x 128-bit column vectors)."""
    if generic:
        return min(4, m) * next(c for c in (4, 2, 1) if n % c == 0) // 2
    from bhvit_export.targets.kernels.neon_gemm import NeonTile, arch_tile

    tile = NeonTile(**arch_tile(_target(cpu))).fit(m, n)
    return tile.mr * tile.nr // 2


def tile_bmac_per_cycle(
    k_loop: list[str], tile: list[str], cnt_per_tile: int, cpu: str, tool: str
) -> float:
    """Binary MACs per cycle of one whole output tile.

    llvm-mca runs a loop body straight through, so a K loop nested in the tile loop would count once;
    instead the tile costs ``trips`` K-loop iterations plus the rest of the tile body, with
    ``trips = cnt_per_tile / cnt per K-loop iteration`` (whatever LLVM's unroll factor was).
    """
    if tile == k_loop:
        return 128 * _cnt(tile) / _cycles(tile, cpu, tool)
    start = next(i for i in range(len(tile)) if tile[i : i + len(k_loop)] == k_loop)
    rest = tile[:start] + tile[start + len(k_loop) :]
    trips = (cnt_per_tile - _cnt(rest)) / _cnt(k_loop)
    return 128 * cnt_per_tile / (trips * _cycles(k_loop, cpu, tool) + _cycles(rest, cpu, tool))


def analyse(
    shapes: Sequence[tuple[int, int, int]] = SHAPES,
    cpus: Sequence[str] = CPUS,
    *,
    generic: bool = False,
    tools: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Rows (tool, cpu, shape): binary MACs per cycle of the K loop and the tile loop vs the NEON limit."""
    rows = []
    asms = {(cpu, s): _kernel_asm(*s, cpu, generic) for cpu in cpus for s in shapes}
    for tool in tools or mca_tools():
        for cpu in cpus:
            dot = cpu in DOTPROD_CPUS
            limit_body = ideal_loop(dotprod=dot)
            lim = mca(limit_body, cpu, tool=tool, dotprod=dot)
            limit = 128 * sum(ln.startswith("cnt") for ln in limit_body) / lim["cycles_per_iteration"]
            for m, n, k in shapes:
                asm = asms[(cpu, (m, n, k))]
                body = inner_loop(asm)
                tile = inner_loop(asm, with_store=True)
                cyc = _cycles(body, cpu, tool)
                macs = 128 * _cnt(body) / cyc
                per_tile = cnt_per_tile_word(m, n, generic, cpu) * -(-k // 64)
                tile_macs = tile_bmac_per_cycle(body, tile, per_tile, cpu, tool)
                rows.append(
                    {
                        "tool": tool, "cpu": cpu, "dotprod": dot, "m": m, "n": n, "k": k,
                        "loop_instructions": len(body), "cycles_per_iteration": cyc, "bmac_per_cycle": macs,
                        "tile_instructions": len(tile), "tile_bmac_per_cycle": tile_macs,
                        "neon_limit_bmac_per_cycle": limit, "fraction_of_limit": macs / limit,
                        "tile_fraction_of_limit": tile_macs / limit,
                    }
                )
    return {"kernel": "generic TE schedule" if generic else "NEON kernel", "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{'tool':<13}{'cpu':<12}{'M x N x K':<16}{'insts':>6}{'cyc/iter':>9}{'bMAC/cyc':>9}{'limit':>7}"
        f"{'of limit':>9}{'tile bMAC/cyc':>14}{'tile of limit':>14}"
    )
    lines = [f"llvm-mca, aarch64 XNOR/popcount GEMM ({result.get('kernel', '')})", head, "-" * len(head)]
    for r in result["rows"]:
        cpu = r["cpu"] + ("+dot" if r.get("dotprod") else "")
        shape = f"{r['m']}x{r['n']}x{r['k']}"
        lines.append(
            f"{r['tool']:<13}{cpu:<12}{shape:<16}{r['loop_instructions']:>6}{r['cycles_per_iteration']:>9.2f}"
            f"{r['bmac_per_cycle']:>9.1f}{r['neon_limit_bmac_per_cycle']:>7.1f}{r['fraction_of_limit']:>9.0%}"
            f"{r['tile_bmac_per_cycle']:>14.1f}{r['tile_fraction_of_limit']:>14.0%}"
        )
    lines.append(
        "limit: eor + cnt + uadalp (udot on +dot CPUs) per 128 bits, no loads (llvm-mca, same CPU model); "
        "tile: whole output tile incl. init, widening and epilogue"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generic", action="store_true", help="the TE-scheduled kernel (baseline)")
    parser.add_argument("--cpus", default=",".join(CPUS), help="comma-separated mcpu list")
    ns = parser.parse_args()
    res = analyse(cpus=ns.cpus.split(","), generic=ns.generic)
    print(json.dumps(res, indent=2) if ns.json else format_table(res))


if __name__ == "__main__":
    main()
