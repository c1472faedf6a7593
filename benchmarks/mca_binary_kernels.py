"""llvm-mca on the inner loops of every aarch64 binary kernel of BHViT-Tiny, against the NEON limit.

:mod:`bhvit_export.benchmarks.mca` does this for the binary GEMM; here the other binary kernels, at Tiny's
shapes: the expand-pack (one 32-channel body of the folded kernel: popcount + RPReLU epilogue + sign
half word + channel means), the channels-last conv, the attention scores and the QD context (one output
tile of :func:`bhvit_export.targets.kernels.neon_gemm.emit_tiles`: K words + widening + epilogue). bMAC/cycle =
128 x ``cnt`` / llvm-mca cycles of that loop; the limit is llvm-mca's eor + cnt + accumulate loop on
the same CPU model (:func:`bhvit_export.benchmarks.mca.ideal_loop`). The packing stages (sign words of q/k/v,
the level planes, im2col) are outside these loops; ``bench --arm`` prices whole calls.

    python -m bhvit_export.benchmarks.mca_binary_kernels [--cpus cortex-a72,cortex-a76] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Optional, Sequence

from .mca import CPUS, DOTPROD_CPUS, _cnt, _cycles, _llvm_mca, _target, ideal_loop, inner_loop, mca, tile_bmac_per_cycle

#: (kernel, shape label, module builder for a target, cnt per tile: None = the loop is the whole tile).
Case = tuple[str, str, Callable[[Any], Any], Callable[[Any], Optional[int]]]


def _tile_cnt(rows: int, cols: int, kwords: int) -> Callable[[Any], int]:
    """``cnt`` per ``emit_tiles`` tile: mr x nr/2 vectors per K word, with the record's tile fitted."""
    def per_tile(target: Any) -> int:
        from bhvit_export.targets.kernels.neon_gemm import NeonTile, arch_tile

        t = NeonTile(**arch_tile(target)).fit(rows, cols)
        return t.mr * t.nr // 2 * kwords
    return per_tile


def cases() -> list[Case]:
    from bhvit_export.targets.kernels import attention, bconv_nhwc, expand_pack_neon
    from bhvit_export.targets.kernels.bconv import ConvGeometry

    conv64 = ConvGeometry(1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4)
    conv128 = ConvGeometry(1, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4)
    out: list[Case] = []
    for m, n, k, r in ((3136, 512, 64, 8), (784, 1024, 128, 8), (196, 1024, 256, 4), (49, 2048, 512, 4)):
        # what aarch64 runs: the folded kernel (constants folded at import, RPReLU slopes in [0, 1])
        out.append(("expand_pack", f"{m}x{n}x{k}", lambda t, s=(m, n, k, r): expand_pack_neon.folded_module(*s, True, t),
                    lambda t: None))
    for g in (conv64, conv128):
        out.append(("bconv_nhwc", f"{g.channels}ch g{g.group}", lambda t, g=g: bconv_nhwc.bconv_folded_module(g, None, t),
                    _tile_cnt(g.out_h * g.out_w, g.og, -(-g.k // 64))))
    for b, n, c, h in ((4, 53, 256, 4), (1, 50, 512, 8)):
        d = c // h
        out.append(("scores", f"{b}x{n}x{c} h{h}", lambda t, s=(b, n, c, h): attention.scores_module(*s, 8.0, t),
                    _tile_cnt(n, n, -(-d // 64))))
        out.append(("qd_context", f"{b}x{n}x{c} h{h}", lambda t, s=(b, n, c, h): attention.qd_context_module(*s, t),
                    _tile_cnt(n, d, 3 * -(-n // 64))))
    return out


def analyse(cpus: Sequence[str] = CPUS, kernels: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Rows (cpu, kernel, shape): bMAC/cycle of the kernel's tile (or block) loop vs the NEON limit
    (``kernels``: only these, e.g. ``["scores"]``)."""
    from bhvit_export.targets.kernels.build import assembly

    tool = _llvm_mca()
    rows = []
    for cpu in cpus:
        dot = cpu in DOTPROD_CPUS
        body = ideal_loop(dotprod=dot)
        limit = 128 * _cnt(body) / mca(body, cpu, tool=tool, dotprod=dot)["cycles_per_iteration"]
        target = _target(cpu)
        for kernel, shape, build, per_tile in (c for c in cases() if kernels is None or c[0] in kernels):
            asm = assembly(build(target), target)
            tile = inner_loop(asm, with_store=True)
            k_loop = inner_loop(asm)
            cnt = per_tile(target)
            if cnt is None or tile == k_loop:
                bmac = 128 * _cnt(tile) / _cycles(tile, cpu, tool)
            else:
                bmac = tile_bmac_per_cycle(k_loop, tile, cnt, cpu, tool)
            rows.append({"cpu": cpu, "kernel": kernel, "shape": shape, "tile_instructions": len(tile),
                         "bmac_per_cycle": bmac, "neon_limit_bmac_per_cycle": limit, "fraction_of_limit": bmac / limit})
    return {"tool": tool, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = f"{'cpu':<12}{'kernel':<13}{'shape':<18}{'insts':>6}{'bMAC/cyc':>9}{'limit':>7}{'of limit':>9}"
    lines = [f"llvm-mca ({result['tool']}), inner loops of the aarch64 binary kernels (one output tile / block)", head,
             "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['cpu']:<12}{r['kernel']:<13}{r['shape']:<18}{r['tile_instructions']:>6}"
                     f"{r['bmac_per_cycle']:>9.1f}{r['neon_limit_bmac_per_cycle']:>7.1f}{r['fraction_of_limit']:>9.0%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpus", default=",".join(CPUS), help="comma-separated mcpu list")
    ns = parser.parse_args()
    res = analyse(ns.cpus.split(","))
    print(json.dumps(res, indent=2) if ns.json else format_table(res))


if __name__ == "__main__":
    main()
