"""Toolchain lookup, runtime libraries and the native runner (``targets/toolchain.py``,
``runtime_libs.py``, ``native_build.py``, ``native_run.py``, ``native/runner.cc``).

* missing tools (empty PATH) are one TargetError line naming the apt package;
* the x86_64 runner, on random batches/blocks/values, gives bit for bit what python's Relax VM
  gives on the same library (same machine code), including .npy v2 inputs; bad inputs are one line;
* the aarch64 runner under qemu matches numpy on a matmul + relu (the official micro fixture's
  aarch64 bundle through this runner, against the official logits: ``tests/test_bundle_aarch64.py``).

Tests needing the cross toolchain or qemu skip with the missing tool's message.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.targets.arch import AARCH64  # noqa: E402
from bhvit_export.targets import toolchain  # noqa: E402
from bhvit_export.targets.native_build import build_rpc_server, build_runner, export_library  # noqa: E402
from bhvit_export.targets.native_run import run_native  # noqa: E402
from bhvit_export.targets.runtime_libs import include_dirs, runtime_libs  # noqa: E402
from bhvit_export.targets.toolchain import elf_arch, host_arch, qemu_command, require  # noqa: E402

K, N, ROWS = 16, 8, 2  # matmul: input [B, ROWS, K] @ [K, N] -> relu -> [B, ROWS, N]
W = np.random.default_rng(7).standard_normal((K, N)).astype(np.float32)


def need(*tools: str) -> None:
    """Skip (with the install hint) unless every tool is on PATH."""
    for tool in tools:
        try:
            require(tool)
        except TargetError as err:
            pytest.skip(str(err))


def aarch64_libs() -> list[Path]:
    """The aarch64 runtime libraries, or skip when they cannot be downloaded here."""
    try:
        return runtime_libs("aarch64")
    except TargetError as err:
        pytest.skip(str(err))


def matmul_relu(batch: int):
    """A Relax ``main(x: [batch, ROWS, K]) = relu(x @ W)``."""
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((batch, ROWS, K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.matmul(x, relax.const(W))))
        bb.emit_func_output(out)
    return bb.get()


@functools.lru_cache(maxsize=None)
def build_dir() -> Path:
    """One folder per pytest process for compiled libraries, shared by test_native and test_emulate
    (the micro model takes minutes to cross-compile on a loaded 2-core machine)."""
    folder = Path(tempfile.mkdtemp(prefix="bhvit-native-test-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.lru_cache(maxsize=None)
def matmul_lib(batch: int, arch: str) -> Path:
    """``matmul_relu(batch)`` built and exported for ``arch`` (cached per test session)."""
    from bhvit_export.targets.build import build
    from bhvit_export.targets.kernels.target_info import AARCH64_CORTEX_A72

    target = AARCH64_CORTEX_A72 if arch == "aarch64" else None
    return export_library(build(matmul_relu(batch), target), build_dir() / f"mm_b{batch}_{arch}.so", arch)


# --- toolchain ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ("aarch64-g++", "aarch64-linux-gnu-g++ not found: install it with `apt-get install g++-aarch64-linux-gnu`"),
        ("qemu-aarch64", "qemu-aarch64 not found: install it with `apt-get install qemu-user`"),
        ("g++", "g++ not found: install it with `apt-get install g++`"),
        ("nvcc", "nvcc not found: install the CUDA toolkit"),
    ],
)
def test_missing_tool_names_its_package(tool: str, message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError) as err:
        require(tool)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_found_tool_is_an_absolute_path(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "qemu-aarch64"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert require("qemu-aarch64") == str(fake)
    if not AARCH64.sysroot.joinpath("lib").is_dir():
        pytest.skip("no aarch64 sysroot: install it with `apt-get install g++-aarch64-linux-gnu`")
    assert qemu_command("aarch64") == [str(fake), "-L", "/usr/aarch64-linux-gnu"]


def test_unknown_tool_and_arch() -> None:
    with pytest.raises(TargetError, match="unknown tool 'clang'"):
        require("clang")
    with pytest.raises(TargetError, match="unsupported architecture 'riscv64'"):
        qemu_command("riscv64")


def test_host_needs_no_emulator() -> None:
    assert qemu_command(host_arch()) == []
    assert toolchain.normalize_arch("arm64") == "aarch64" and toolchain.normalize_arch("AMD64") == "x86_64"


def test_cross_build_without_cross_compiler_is_a_target_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match="aarch64-linux-gnu-g\\+\\+ not found"):
        build_runner("aarch64", tmp_path / "out")
    with pytest.raises(TargetError, match="qemu-aarch64 not found: install it with `apt-get install qemu-user`"):
        run_native(tmp_path / "r", tmp_path / "l.so", tmp_path / "i.npy", tmp_path / "o.npy", arch="aarch64")


# --- runtime libraries -------------------------------------------------------------------------


def test_host_runtime_libs_and_headers() -> None:
    libs = runtime_libs(host_arch())
    assert [p.name for p in libs] == ["libtvm_runtime.so", "libtvm_ffi.so"]
    assert all(elf_arch(p) == host_arch() for p in libs)
    assert (include_dirs()[0] / "tvm" / "ffi" / "function.h").is_file()
    assert (include_dirs()[1] / "dlpack" / "dlpack.h").is_file()


def test_aarch64_runtime_libs_are_aarch64_and_cached() -> None:
    libs = aarch64_libs()
    assert [p.name for p in libs] == ["libtvm_runtime.so", "libtvm_ffi.so"]
    assert [elf_arch(p) for p in libs] == ["aarch64", "aarch64"]
    assert libs[0].parent.name.startswith("aarch64-tvm0.27.0.post1-ffi0.1.14.post1")
    assert runtime_libs("aarch64") == libs  # cached: no second download


def test_download_failure_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    import bhvit_export.targets.runtime_libs as rl

    monkeypatch.setenv("BHVIT_CACHE", str(tmp_path))
    calls = []

    def fake_run(cmd, **_kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement\n")

    monkeypatch.setattr(rl.subprocess, "run", fake_run)
    with pytest.raises(TargetError) as err:
        rl.runtime_libs("aarch64")
    msg = str(err.value)
    assert "could not download the aarch64 TVM runtime" in msg and "Could not find a version" in msg
    assert "check network access to PyPI" in msg and "\n" not in msg
    cmd = calls[0]
    assert cmd[cmd.index("--platform") + 1] == "manylinux_2_28_aarch64"
    assert "apache-tvm==0.27.0.post1" in cmd and "apache-tvm-ffi==0.1.14.post1" in cmd
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left in the cache


# --- x86_64 runner -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("g++")
    return build_runner(host_arch(), tmp_path_factory.mktemp("runner"))


def test_built_runner_is_cached_and_self_contained(host_runner: Path) -> None:
    stamp = host_runner.parent / ".bhvit-run.key"
    before = (host_runner.stat().st_mtime_ns, stamp.read_text())
    assert build_runner(host_arch(), host_runner.parent) == host_runner
    assert (host_runner.stat().st_mtime_ns, stamp.read_text()) == before  # not rebuilt
    assert (host_runner.parent / "libtvm_runtime.so").is_file() and (host_runner.parent / "libtvm_ffi.so").is_file()
    dyn = subprocess.run(["readelf", "-d", str(host_runner)], capture_output=True, text=True).stdout
    if dyn:  # binutils present
        assert "[$ORIGIN]" in dyn and "libtvm_runtime.so" in dyn and "libtvm_ffi.so" in dyn


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.sampled_from([1, 3]),
    blocks=st.integers(1, 3),
    npy_version=st.sampled_from([(1, 0), (2, 0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_host_runner_matches_python_vm_bit_for_bit(
    host_runner: Path, tmp_path: Path, batch: int, blocks: int, npy_version, seed: int
) -> None:
    import tvm
    from tvm import relax

    lib = matmul_lib(batch, host_arch())
    x = (np.random.default_rng(seed).standard_normal((batch * blocks, ROWS, K)) * 3).astype(np.float32)
    inp, out = tmp_path / f"x{seed}.npy", tmp_path / f"y{seed}.npy"
    with open(inp, "wb") as f:
        np.lib.format.write_array(f, x, version=npy_version)
    lat = run_native(host_runner, lib, inp, out, arch=host_arch(), batch=batch, runs=3, warmup=1, threads=1)
    assert len(lat) == 3 and all(t > 0 for t in lat)
    machine = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    want = np.concatenate(
        [machine["main"](tvm.runtime.tensor(x[i : i + batch], tvm.cpu())).numpy() for i in range(0, len(x), batch)]
    )
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (batch * blocks, ROWS, N)
    assert np.array_equal(got, want)
    np.testing.assert_allclose(got, np.maximum(x @ W, 0), rtol=1e-5, atol=1e-5)


def test_runner_prints_one_json_line(host_runner: Path, tmp_path: Path) -> None:
    lib = matmul_lib(1, host_arch())
    np.save(tmp_path / "x.npy", np.ones((2, ROWS, K), np.float32))
    proc = subprocess.run(
        [str(host_runner), str(lib), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--runs", "4", "--warmup", "0"],
        capture_output=True, text=True, check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["batch"] == 1 and len(report["latency_ms"]) == 4
    assert len(report["cpu_ms"]) == 4 and all(t >= 0 for t in report["cpu_ms"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("float64", "dtype '<f8', expected float32"),
        ("fortran", "Fortran order"),
        ("not_multiple", "input has 3 rows, not a positive multiple of --batch 2"),
        ("wrong_shape", "shape[2] mismatch"),
        ("not_npy", "is not a .npy file"),
        ("missing_lib", "library"),
    ],
)
def test_runner_errors_are_one_line(host_runner: Path, tmp_path: Path, case: str, message: str) -> None:
    lib = matmul_lib(1, host_arch())
    batch, x = 1, np.zeros((2, ROWS, K), np.float32)
    if case == "float64":
        x = x.astype(np.float64)
    elif case == "fortran":
        x = np.asfortranarray(np.zeros((2, ROWS, K), np.float32))
    elif case == "not_multiple":
        x, batch = np.zeros((3, ROWS, K), np.float32), 2
    elif case == "wrong_shape":
        x = np.zeros((2, ROWS, K + 1), np.float32)
    elif case == "missing_lib":
        lib = tmp_path / "nope.so"
    np.save(tmp_path / "x.npy", x)
    if case == "not_npy":
        (tmp_path / "x.npy").write_bytes(b"hello")
    with pytest.raises(TargetError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        run_native(host_runner, lib, tmp_path / "x.npy", tmp_path / "y.npy", arch=host_arch(), batch=batch)
    assert "\n" not in str(err.value)


def test_wrong_arch_library_is_named(host_runner: Path, tmp_path: Path) -> None:
    need("aarch64-g++")
    lib = matmul_lib(1, "aarch64")
    np.save(tmp_path / "x.npy", np.zeros((1, ROWS, K), np.float32))
    with pytest.raises(TargetError, match="built for aarch64, not x86_64"):
        run_native(host_runner, lib, tmp_path / "x.npy", tmp_path / "y.npy", arch="x86_64")


def test_runner_finds_libs_through_lib_dir(host_runner: Path, tmp_path: Path) -> None:
    """A runner moved away from its libraries still runs when ``lib_dir`` points at them."""
    lonely = tmp_path / "bin" / "bhvit-run"
    lonely.parent.mkdir()
    shutil.copy2(host_runner, lonely)
    np.save(tmp_path / "x.npy", np.ones((1, ROWS, K), np.float32))
    args = (matmul_lib(1, host_arch()), tmp_path / "x.npy", tmp_path / "y.npy")
    with pytest.raises(TargetError, match="libtvm"):
        run_native(lonely, *args, arch=host_arch())
    assert len(run_native(lonely, *args, arch=host_arch(), lib_dir=host_runner.parent, runs=1)) == 1


# --- aarch64 runner under qemu -----------------------------------------------------------------


@pytest.fixture(scope="module")
def aarch64_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("aarch64-g++", "qemu-aarch64")
    aarch64_libs()
    return build_runner("aarch64", tmp_path_factory.mktemp("runner-aarch64"))


def test_aarch64_runner_and_server_binaries(aarch64_runner: Path, tmp_path: Path) -> None:
    assert elf_arch(aarch64_runner) == "aarch64"
    assert elf_arch(build_rpc_server("aarch64", tmp_path)) == "aarch64"


@pytest.mark.parametrize("batch", [1, 3])
def test_aarch64_runner_under_qemu_matches_numpy(aarch64_runner: Path, tmp_path: Path, batch: int) -> None:
    lib = matmul_lib(batch, "aarch64")
    assert elf_arch(lib) == "aarch64"
    x = np.random.default_rng(batch).standard_normal((2 * batch, ROWS, K)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    lat = run_native(aarch64_runner, lib, tmp_path / "x.npy", tmp_path / "y.npy", arch="aarch64", batch=batch, runs=2)
    assert len(lat) == 2
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.maximum(x @ W, 0), rtol=1e-5, atol=1e-5)
