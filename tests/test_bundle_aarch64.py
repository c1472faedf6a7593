"""An aarch64 bundle of the official micro fixture, verified without ARM hardware.

* through its native runner under qemu (``verify --native``);
* over TVM RPC on the emulated device (``bhvit-export emulate``'s server, via ``bhvit_export.targets.emulate``);
both against the official logits with the spec's end-to-end tolerance. Loading it in this x86
process is refused with a pointer to --rpc/--native.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")

from bhvit_export.bundle import manifest as mf  # noqa: E402
from bhvit_export.cli import cli  # noqa: E402
from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.targets.toolchain import elf_arch, require  # noqa: E402


def _need_qemu() -> None:
    try:
        require("qemu-aarch64")
    except TargetError as e:
        pytest.skip(str(e))


def _verify_json(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["verify", *args, "--no-torch", "--json"])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_bundle_is_aarch64_with_runtime(micro_bundle_aarch64: Path) -> None:
    m = mf.check_bundle(micro_bundle_aarch64)
    assert m.arch == "aarch64" and m.native is not None
    assert elf_arch(micro_bundle_aarch64 / mf.LIBRARY) == "aarch64"
    assert elf_arch(micro_bundle_aarch64 / m.native["runner"]) == "aarch64"
    for lib in m.native["libs"]:
        assert elf_arch(micro_bundle_aarch64 / lib) == "aarch64"


def test_native_runner_under_qemu_passes(micro_bundle_aarch64: Path) -> None:
    _need_qemu()
    r = _verify_json(str(micro_bundle_aarch64), "--native", "--runs", "1", "--warmup", "0")
    assert r["passed"] and r["top1_agreement"] == 1.0 and r["cosine"] >= 0.9995
    assert "qemu" in r["devices"][0]["where"] and r["latency_ms"]["runs"] == 1
    assert not [n for n in r["notes"] if "CPU features" in n]  # qemu's CPU was asked (bhvit-run --cpu-features)


def test_rpc_on_emulated_device_passes(micro_bundle_aarch64: Path) -> None:
    _need_qemu()
    from bhvit_export.targets.emulate import emulator

    with emulator("aarch64") as (host, port):
        r = _verify_json(str(micro_bundle_aarch64), "--rpc", f"{host}:{port}", "--runs", "1", "--warmup", "0")
    assert r["passed"] and r["top1_agreement"] == 1.0 and r["max_abs_over_std"] <= 0.05
    assert r["devices"][0]["where"].startswith("rpc ")
    assert not [n for n in r["notes"] if "CPU features" in n]  # the device was asked (bhvit.cpu_features)


def test_local_load_of_foreign_bundle_is_refused(micro_bundle_aarch64: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle_aarch64), "--no-torch", "--runs", "0"])
    assert res.exit_code == 2 and "--rpc" in res.stderr


def test_rpc_nobody_listening_is_one_line() -> None:
    res = CliRunner().invoke(cli, ["verify", "/nonexistent", "--rpc", "127.0.0.1:1"])
    assert res.exit_code == 2 and res.stderr.count("error[") == 1
