"""The emulated RPC device (``targets/emulate.py``, ``native/rpc_server.cc``).

An unmodified ``tvm.rpc.connect`` talks to the native server (on the host, and as aarch64 under
qemu): upload, ``load_module``, a Relax VM on ``remote.cpu()``, ``time_evaluator`` (the official micro
fixture's aarch64 bundle over RPC against the official logits: ``tests/test_bundle_aarch64.py``). The server is
always killed (``emulator`` exit, SIGTERM to ``serve``), a busy port or a missing qemu is one
TargetError line, and a wrong RPC key is refused without killing the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.targets.emulate import emulator  # noqa: E402
from bhvit_export.targets.toolchain import host_arch  # noqa: E402
from tests.helpers import REPO  # noqa: E402
from tests.targets.test_native import K, ROWS, W, aarch64_libs, matmul_lib, need  # noqa: E402


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _run_remote(host: str, port: int, lib: Path, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Upload ``lib``, run ``main`` block by block on ``remote.cpu()``; (outputs, min ms of 3 timed runs)."""
    import tvm
    from tvm import relax, rpc

    remote = rpc.connect(host, port)
    remote.upload(str(lib))
    dev = remote.cpu()
    machine = relax.VirtualMachine(remote.load_module(lib.name), dev)
    outs = []
    for i in range(0, len(x), batch):
        out = machine["main"](tvm.runtime.tensor(x[i : i + batch], dev))
        outs.append((out if hasattr(out, "numpy") else out[0]).numpy())
    timer = machine.time_evaluator("main", dev, number=1, repeat=3)
    result = timer(tvm.runtime.tensor(x[:batch], dev))
    return np.concatenate(outs), min(result.results) * 1e3


@pytest.mark.parametrize("arch", ["host", "aarch64"])
def test_rpc_matmul_matches_numpy(arch: str) -> None:
    arch = host_arch() if arch == "host" else arch
    need("g++") if arch == host_arch() else (need("aarch64-g++", "qemu-aarch64"), aarch64_libs())
    lib = matmul_lib(2, arch)
    x = np.random.default_rng(3).standard_normal((4, ROWS, K)).astype(np.float32)
    start = time.perf_counter()
    with emulator(arch) as (host, port):
        started = time.perf_counter() - start
        got, ms = _run_remote(host, port, lib, x, batch=2)
        again, _ = _run_remote(host, port, lib, x, batch=2)  # the server accepts the next session
    assert not _answers(host, port)  # killed on exit
    np.testing.assert_allclose(got, np.maximum(x @ W, 0), rtol=1e-5, atol=1e-5)
    assert np.array_equal(got, again) and ms > 0
    print(f"\n{arch} RPC server ready in {started:.2f} s (build cached); matmul main {ms:.3f} ms")


def test_wrong_key_is_refused_and_server_survives() -> None:
    need("g++")
    from tvm import rpc

    with emulator(host_arch(), key="bhvit") as (host, port):
        with pytest.raises(Exception, match="cannot find server that matches key=client:other"):
            rpc.connect(host, port, key="other")
        remote = rpc.connect(host, port, key="bhvit")
        assert remote.cpu().exist


def test_busy_port_is_one_line_target_error() -> None:
    need("g++")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(TargetError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use") as err:
            with emulator(host_arch(), port=port):
                pass
    assert "\n" not in str(err.value)


def test_missing_qemu_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match="qemu-aarch64 not found: install it with `apt-get install qemu-user`"):
        with emulator("aarch64"):
            pass


def test_serve_stops_cleanly_on_sigterm() -> None:
    """``serve`` in its own process: prints its port via ``on_ready``, exits 0 on SIGTERM, leaves no server."""
    need("aarch64-g++", "qemu-aarch64")
    aarch64_libs()
    code = (
        "from bhvit_export.targets.emulate import serve\n"
        "import sys\n"
        "sys.exit(serve('aarch64', port=0, on_ready=lambda h, p: print(h, p, flush=True)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        host, port = proc.stdout.readline().split()
        assert _answers(host, int(port))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not _answers(host, int(port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
