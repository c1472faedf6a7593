"""Reliability sweep (issue #7): a missing tool or package is one line saying what to install, exit 2.

Tools are hidden by pointing ``PATH`` at a folder holding only what the case allows; a missing TVM is
simulated in a fresh process (``sys.modules['tvm'] = None`` makes every ``import tvm`` fail the way
an absent package does). Each case fails before any model is loaded or built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bhvit_export.cli import cli
from tests.helpers import REPO, is_error_line

pytest.importorskip("tvm")


def run(*args: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, [ln for ln in res.stderr.splitlines() if not ln.startswith("... ")]


def one_error(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and is_error_line(err[0]), err
    for n in needles:
        assert n in err[0], (n, err[0])


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH = one empty folder (put fake tools in it to let a case past the earlier checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    for var in ("CC", "CXX"):
        monkeypatch.delenv(var, raising=False)
    return bin_dir


def _fake_tool(bin_dir: Path, name: str) -> None:
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)


def test_missing_cross_compiler(bare_path: Path, tmp_path: Path) -> None:
    code, err = run("compile", str(tmp_path / "m.onnx"), "--target", "aarch64", "-o", str(tmp_path / "b"))
    one_error(code, err, "aarch64-linux-gnu-g++ not found", "apt-get install g++-aarch64-linux-gnu")
    assert not (tmp_path / "b").exists()


def test_missing_host_compiler(bare_path: Path, tmp_path: Path) -> None:
    code, err = run("compile", str(tmp_path / "m.onnx"), "--target", "x86_64", "-o", str(tmp_path / "b"))
    one_error(code, err, "no C++ compiler", "apt-get install g++")


def test_missing_nvcc(bare_path: Path, tmp_path: Path) -> None:
    _fake_tool(bare_path, "aarch64-linux-gnu-g++")  # Jetson's host is aarch64: let that check pass
    code, err = run("compile", str(tmp_path / "m.onnx"), "--target", "jetson-orin", "-o", str(tmp_path / "b"))
    one_error(code, err, "nvcc not found", "install the CUDA toolkit")


def test_missing_qemu(bare_path: Path) -> None:
    code, err = run("emulate", "--port", "1")
    one_error(code, err, "qemu-aarch64 not found", "apt-get install qemu-user")


def _without_tvm(*args: str) -> subprocess.CompletedProcess[str]:
    """``bhvit-export ARGS`` in a fresh process where tvm and tvm_ffi cannot be imported."""
    code = (
        "import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None\n"
        "from bhvit_export.cli import main; main(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_missing_tvm_compile(tmp_path: Path) -> None:
    proc = _without_tvm("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"))
    err = [ln for ln in proc.stderr.splitlines() if not ln.startswith("... ")]
    assert proc.returncode == 2, proc.stderr
    assert err == ["error[environment]: this command needs the Python package 'tvm', which is not installed (pip install apache-tvm)"]


def test_missing_tvm_verify(micro_bundle: Path) -> None:
    proc = _without_tvm("verify", str(micro_bundle), "--runs", "0", "--no-torch")
    err = [ln for ln in proc.stderr.splitlines() if not ln.startswith("... ")]
    assert proc.returncode == 2, proc.stderr
    assert err == ["error[environment]: this command needs the Python package 'tvm', which is not installed (pip install apache-tvm)"]


# --------------------------------------------------------------------------------------------------
# exit codes everywhere: a user error is one line and exit 2 in every command; --debug adds the traceback

USER_ERRORS = {
    "to-onnx": (["to-onnx", "{tmp}/nope.pth", "-o", "{tmp}/m.onnx"], "error[checkpoint]: no such file"),
    "inspect": (["inspect", "{tmp}/nope.onnx"], "error[onnx]: no such file"),
    "compile": (["compile", "{tmp}/nope.onnx", "-o", "{tmp}/b"], "error[onnx]: no such file"),
    "compile-target": (["compile", "{tmp}/nope.onnx", "-o", "{tmp}/b", "--target", "no-such-target"], "error[target]: --target no-such-target"),
    "verify": (["verify", "{tmp}/nope"], "error[bundle]: {tmp}/nope: no such bundle"),
    "verify-rpc": (["verify", "{tmp}", "--rpc", "x", "--native"], "error[bundle]: choose one of --rpc, --tracker and --native"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_exit_2_without_traceback_in_every_command(case: str, tmp_path: Path) -> None:
    args, first = USER_ERRORS[case]
    args = [a.format(tmp=tmp_path) for a in args]
    first = first.format(tmp=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bhvit_export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    err = [ln for ln in proc.stderr.splitlines() if not ln.startswith("... ")]
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith(first), proc.stderr
    debug = CliRunner().invoke(cli, ["--debug", *args])  # in-process: the traceback, then the same line
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and debug.stderr.splitlines()[-1] == err[0]


@pytest.mark.parametrize("args", [["emulate", "--arch", "riscv"], ["bench", "--model", "huge"], ["verify"], ["nonsense"]],
                         ids=["emulate", "bench", "verify-no-bundle", "unknown-command"])
def test_usage_errors_exit_2_in_every_command(args: list[str]) -> None:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "Usage:" in res.stderr and "Traceback" not in res.stderr
