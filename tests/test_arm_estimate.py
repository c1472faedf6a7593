"""``bench --arm``'s estimator: the qemu block-count plugin, llvm-mca pricing, and the micro bundle.

* the plugin builds and counts exactly: a loop of known trip count, in a program cross-compiled
  here, runs its loop block exactly that often, and the block is named after its function;
* the estimator runs on the aarch64 micro bundle (the session's one build, from ``conftest``): one
  inference has non-zero counts, most cycles land in ``model.so``, and its hot blocks are NEON code
  (``cnt`` of the popcount kernels);
* the report's JSON has the fields the issue's contract names.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bhvit_export.errors import TargetError


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed (scripts/install-system-deps.sh)")


LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) long spin(long n) {
  long s = 0;
  for (long i = 0; i < n; ++i) { s += i * i; __asm__ volatile("" : "+r"(s)); }
  return s;
}
int main(int argc, char **argv) { printf("%ld\n", spin(atol(argv[1]))); return 0; }
"""


@pytest.fixture(scope="module")
def loop_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("aarch64-linux-gnu-gcc", "qemu-aarch64")
    d = tmp_path_factory.mktemp("loop")
    (d / "loop.c").write_text(LOOP_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", str(d / "loop.c"), "-o", str(d / "loop")], check=True)
    return d / "loop"


def test_plugin_builds() -> None:
    _need("gcc")
    from bhvit_export.benchmarks.block_counts import build_plugin

    lib = build_plugin()
    assert lib.is_file() and lib.read_bytes()[:4] == b"\x7fELF"


def test_plugin_counts_a_loop_exactly(loop_program: Path) -> None:
    from bhvit_export.benchmarks import block_counts, symbols

    a = block_counts.count([str(loop_program), "1000"], "aarch64")
    b = block_counts.count([str(loop_program), "3000"], "aarch64")
    diff = b.minus(a)
    # The loop body block ran 2000 more times; everything else (printf of a number) barely changed.
    loop = max(diff.blocks, key=lambda blk: blk.count)
    assert loop.count == 2000
    assert symbols.function_at(diff.mapping_of(loop.haddr), loop.haddr) == ("loop", "spin")
    assert b.instructions > a.instructions > 0


def test_price_orders_blocks_by_work() -> None:
    _need("llvm-mca")
    from bhvit_export.benchmarks.block_cost import price

    short = ["add x0, x0, #1"]
    long = ["mul x1, x1, x1"] * 8  # a dependent chain of 8 multiplies
    cyc = price([short, long], "aarch64", "cortex-a72").cycles
    assert 0 < cyc[0] < cyc[1] and cyc[1] >= 8 * 3  # A72 MUL latency is 3


def test_failing_program_is_one_target_error(loop_program: Path) -> None:
    from bhvit_export.benchmarks import block_counts

    with pytest.raises(TargetError, match="under qemu-aarch64 failed"):
        block_counts.count([str(loop_program.parent / "missing")], "aarch64")


def test_estimator_on_micro_bundle(micro_bundle_aarch64: Path) -> None:
    _need("qemu-aarch64", "llvm-mca", "llvm-mc")
    from bhvit_export.benchmarks import block_estimate
    from bhvit_export.benchmarks.block_cost import disassemble

    counts = block_estimate.count_inference(
        micro_bundle_aarch64 / "runtime" / "bhvit-run", micro_bundle_aarch64 / "model.so", "aarch64",
        qemu_cpu="cortex-a72",
    )
    assert counts.instructions > 1_000_000 and all(b.count > 0 for b in counts.blocks)
    hot = block_estimate.hot_blocks(counts, 0.99)
    asm = disassemble([b.insns for b in hot], "aarch64")
    ops = {ln.split()[0] for body in asm for ln in body}
    assert "cnt" in ops, "no NEON popcount in the hot blocks"
    assert any(".16b" in ln or ".4s" in ln for body in asm for ln in body), "no NEON vector instructions"
    est = block_estimate.estimate(counts, "aarch64", "cortex-a72", 1.8, asm=asm,
                                  library=micro_bundle_aarch64 / "model.so")
    assert est.instructions == counts.instructions and est.estimated_ms > 0
    in_model = sum(f.cycles for f in est.functions if f.lib == "model.so")
    assert in_model > 0.8 * est.cycles
    assert any(f.name.startswith("bhvit_") for f in est.functions)


def test_report_json_has_the_contract_fields() -> None:
    from bhvit_export.benchmarks.arm_report import ArmReport
    from bhvit_export.benchmarks.block_estimate import ARM_CPUS, CLOCKS_GHZ, Estimate

    rep = ArmReport("tiny")
    for cpu in ARM_CPUS:
        rep.estimates[cpu] = {s: Estimate(cpu, CLOCKS_GHZ[cpu], n, 2.0 * n, 1.0) for s, n in (("bhvit", 10**6), ("tvm_fp32", 10**7))}
    rep.x86 = {"estimated_ms": 1.0, "measured_ms": 1.25, "relative_error": -0.2}
    out = rep.to_json()
    assert set(out["cpus"]) == {"cortex-a55", "cortex-a72", "cortex-a76", "cortex-a78"}
    for cpu, by in out["cpus"].items():
        assert set(by) == {"bhvit", "tvm_fp32"}  # only systems: a checker may iterate over them
        for s in ("bhvit", "tvm_fp32"):
            assert {"estimated_ms", "instructions", "clock_ghz"} <= set(by[s])
        assert out["speedup_vs"][cpu]["tvm_fp32"] == pytest.approx(10.0)
    assert {"estimated_ms", "measured_ms", "relative_error"} <= set(out["x86_validation"])


def test_bench_arm_user_errors_are_one_line() -> None:
    from click.testing import CliRunner

    from bhvit_export.cli import cli

    for args, msg in ((["--model", "tiny", "--model", "small"], "takes one --model"),
                      (["--system", "pytorch"], "chose none of them")):
        res = CliRunner().invoke(cli, ["bench", "--arm", *args])
        assert res.exit_code == 2 and res.stderr.count("error[") == 1 and msg in res.stderr


def test_bench_arm_cpu_choice() -> None:
    """``--cpu`` takes only the four Cortex models (click refuses others; the library names them)."""
    from click.testing import CliRunner

    from bhvit_export.benchmarks.arm_cli import bench_arm
    from bhvit_export.cli import cli
    from bhvit_export.errors import TargetError

    res = CliRunner().invoke(cli, ["bench", "--arm", "--cpu", "cortex-a53"])
    assert res.exit_code == 2 and "cortex-a53" in res.stderr
    with pytest.raises(TargetError, match="got --cpu cortex-x1"):
        bench_arm(["tiny"], ["bhvit"], False, None, False, lambda _m: None, cpus=["cortex-x1"])
