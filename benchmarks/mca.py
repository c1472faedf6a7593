"""ARM evidence without ARM hardware: llvm-mca on the inner loop of our aarch64 binary GEMM.

For each CPU model (Cortex-A72, Cortex-A76) the kernel is compiled for that ``mcpu``, the smallest
loop of its assembly that contains NEON ``cnt`` is cut out, and llvm-mca (Debian ``llvm``) simulates
it: cycles per iteration -> binary MACs per cycle (each ``cnt`` covers 128 bits = 128 binary MACs).
The **NEON limit** is llvm-mca's figure, on the same CPU model, for the ideal loop that does only the
unavoidable work per 128 bits: ``eor`` (XNOR), ``cnt`` and ``uadalp`` (accumulate), with no loads.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from typing import Any, Sequence

from bhvit_export.errors import TargetError

CPUS = ("cortex-a72", "cortex-a76")
#: (M, N, K): Tiny stage-1 MLP fc1, stage-3 attention projection, stage-4 MLP fc2.
SHAPES = ((3136, 512, 128), (196, 256, 256), (49, 512, 2048))
_LABEL = re.compile(r"^(\.LBB\w+):")
_BRANCH = re.compile(r"^\s+(b\.\w+|b|cbnz|cbz|tbnz|tbz)\s+.*?(\.LBB\w+)\s*$")


def _llvm_mca() -> str:
    tool = shutil.which("llvm-mca") or next(
        (p for v in range(20, 13, -1) if (p := shutil.which(f"llvm-mca-{v}"))), None
    )
    if tool is None:
        raise TargetError("llvm-mca not found: install it with `apt-get install llvm`")
    return tool


def inner_loop(asm: str) -> list[str]:
    """Instructions of the smallest ``label: ... branch label`` loop that contains ``cnt``."""
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
            if any(ln.startswith("cnt") for ln in body) and (not best or len(body) < len(best)):
                best = body
    if not best:
        raise ValueError("no loop with NEON cnt found in the assembly")
    return best


def ideal_loop(vectors: int = 8) -> list[str]:
    """Per 128-bit vector: eor, cnt, uadalp into 16-bit accumulators (what LCE's kernels do)."""
    body = []
    for v in range(vectors):
        body += [
            f"eor v{16 + v}.16b, v{v % 4}.16b, v{4 + v % 4}.16b",
            f"cnt v{16 + v}.16b, v{16 + v}.16b",
            f"uadalp v{8 + v % 8}.8h, v{16 + v}.16b",
        ]
    return body


def mca(body: Sequence[str], mcpu: str, iterations: int = 200) -> dict[str, float]:
    """llvm-mca's cycles per iteration and IPC for ``body`` on ``mcpu``."""
    proc = subprocess.run(
        [_llvm_mca(), "-mtriple=aarch64-linux-gnu", f"-mcpu={mcpu}", f"-iterations={iterations}"],
        input="\n".join(body) + "\n",
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise TargetError(f"llvm-mca failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    cycles = float(re.search(r"Total Cycles:\s+(\d+)", proc.stdout).group(1))
    ipc = float(re.search(r"IPC:\s+([\d.]+)", proc.stdout).group(1))
    return {"cycles_per_iteration": cycles / iterations, "ipc": ipc}


def analyse(shapes: Sequence[tuple[int, int, int]] = SHAPES, cpus: Sequence[str] = CPUS) -> dict[str, Any]:
    """Rows (cpu, shape): binary MACs per cycle of our loop vs the NEON limit."""
    from targets.kernels import bgemm
    from targets.kernels.build import assembly

    rows = []
    for cpu in cpus:
        limit_body = ideal_loop()
        lim = mca(limit_body, cpu)
        limit = 128 * sum(ln.startswith("cnt") for ln in limit_body) / lim["cycles_per_iteration"]
        for m, n, k in shapes:
            target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu, "mattr": ["+neon"]}
            body = inner_loop(assembly(bgemm.bgemm_module(m, n, k, target), target))
            r = mca(body, cpu)
            macs = 128 * sum(ln.startswith("cnt") for ln in body) / r["cycles_per_iteration"]
            rows.append(
                {
                    "cpu": cpu, "m": m, "n": n, "k": k, "loop_instructions": len(body),
                    "cycles_per_iteration": r["cycles_per_iteration"], "ipc": r["ipc"],
                    "bmac_per_cycle": macs, "neon_limit_bmac_per_cycle": limit, "fraction_of_limit": macs / limit,
                }
            )
    return {"rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = f"{'cpu':<12}{'M x N x K':<18}{'insts':>6}{'cyc/iter':>10}{'bMAC/cyc':>10}{'limit':>8}{'of limit':>10}"
    lines = ["llvm-mca, inner loop of the aarch64 XNOR/popcount GEMM", head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['cpu']:<12}{r['m']}x{r['n']}x{r['k']:<10}{r['loop_instructions']:>6}{r['cycles_per_iteration']:>10.2f}"
            f"{r['bmac_per_cycle']:>10.1f}{r['neon_limit_bmac_per_cycle']:>8.1f}{r['fraction_of_limit']:>10.0%}"
        )
    lines.append("limit: eor + cnt + uadalp per 128 bits, no loads (llvm-mca on the same CPU model)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    res = analyse()
    print(json.dumps(res, indent=2) if ns.json else format_table(res))


if __name__ == "__main__":
    main()
