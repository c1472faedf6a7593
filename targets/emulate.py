"""An aarch64 TVM RPC device on this x86 host: the native RPC server run under qemu-user.

``serve`` is the foreground command behind ``bhvit-export emulate``; ``emulator`` starts the same
server in the background for tests and benchmarks. Either way the server is started in its own
process group and the whole group is killed on exit, so no qemu process (the server forks one per
RPC session) is left behind. Clients are unmodified ``tvm.rpc.connect(host, port)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator, Optional

from bhvit_export.errors import TargetError
from bhvit_export.targets.native_build import build_rpc_server
from bhvit_export.targets.native_run import native_command
from bhvit_export.targets.toolchain import qemu_command

#: qemu + the server's static initialisers take ~1 s; a loaded CI machine may need far more.
READY_TIMEOUT_S = 60.0


class _Server:
    """A started server process: its address once ready, and the tail of its stderr."""

    def __init__(self, arch: str, host: str, port: int, key: str) -> None:
        qemu_command(arch)  # a missing qemu is reported before anything is built
        cmd, env = native_command(build_rpc_server(arch), arch)
        cmd += ["--host", host, "--port", str(port)] + (["--key", key] if key else [])
        self.arch = arch
        self.last_error = ""
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=env, text=True, start_new_session=True,
        )
        # Forward the server's stderr (session errors) and remember the last line for messages.
        self._pump = threading.Thread(target=self._forward_stderr, daemon=True)
        self._pump.start()
        try:
            self.host, self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _forward_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self.last_error = line.strip()
                if not line.startswith("bhvit-rpc-server: cannot listen"):
                    os.write(2, line.encode())

    def _wait_ready(self) -> tuple[str, int]:
        """Read the server's JSON ready line, then check that the port accepts connections."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=READY_TIMEOUT_S):
                raise TargetError(f"the {self.arch} RPC server did not start within {READY_TIMEOUT_S:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            self._pump.join(timeout=5)
            why = self.last_error or f"exit status {self.proc.returncode}"
            raise TargetError(f"the {self.arch} RPC server failed to start: {why}")
        ready = json.loads(line)
        host, port = str(ready["host"]), int(ready["port"])
        while True:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return host, port
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TargetError(f"the {self.arch} RPC server at {host}:{port} does not answer") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server's process group (server + session children): TERM, then KILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # sessions forked by the server
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._pump.join(timeout=5)  # stderr reaches EOF once every process of the group is gone
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def serve(
    arch: str = "aarch64",
    host: str = "127.0.0.1",
    port: int = 9090,
    *,
    key: str = "",
    on_ready: Optional[Callable[[str, int], None]] = None,
) -> int:
    """Serve an emulated ``arch`` RPC device at ``host:port`` until Ctrl-C or SIGTERM.

    ``on_ready(host, port)`` is called once the port accepts connections (``port=0`` picks a free
    one). Returns the server's exit status (0 after a clean interrupt); a server that cannot start
    (port in use, missing qemu) is a TargetError.
    """
    def _term(_signum, _frame):  # SIGTERM: stop like Ctrl-C does
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _term) if in_main else None
    server: Optional[_Server] = None
    try:
        server = _Server(arch, host, port, key)
        if on_ready is not None:
            on_ready(server.host, server.port)
        status = server.proc.wait()
        if status != 0:
            raise TargetError(f"the {arch} RPC server exited with status {status}: {server.last_error or 'no message'}")
        return status
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def emulator(arch: str = "aarch64", host: str = "127.0.0.1", port: int = 0, *, key: str = "") -> Iterator[tuple[str, int]]:
    """A background ``arch`` RPC device for the duration of the ``with`` block: yields ``(host, port)``.

    ``port=0`` (default) lets the server pick a free port, so parallel tests never collide.
    """
    server = _Server(arch, host, port, key)
    try:
        yield server.host, server.port
    finally:
        server.stop()
