"""Where a bundle's library runs during ``verify``: here, on an RPC device, or as the native runner.

Each runner gives the same two calls, ``run(inputs) -> outputs`` (whole batches, in order) and
``time(runs, warmup) -> [ms]``, so ``verify`` decides pass/fail the same way whichever way the
library was reached. The TVM ones import TVM lazily: the native runner needs no TVM in Python at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from bhvit_export.targets.threads import set_threads
from bhvit_export.targets.toolchain import host_arch

from ..bundle import manifest as mf
from ..errors import BundleError, TargetError


class Runner(Protocol):
    """What ``verify`` needs of a place the library runs."""

    where: str

    def run(self, inputs: np.ndarray) -> np.ndarray: ...

    def time(self, runs: int, warmup: int) -> list[float]: ...

    def close(self) -> None: ...


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _bounded(fn, timeout: Optional[float], what: str):
    """``fn()`` within ``timeout`` seconds (None: directly, in this thread); a silent peer is exit 2."""
    if timeout is None:
        return fn()
    from .. import background

    try:
        return background.call(fn, timeout)
    except background.Timeout:
        raise TargetError(
            f"{what}: no answer within {timeout:g} s; is a TVM RPC server running and responsive there? "
            "(--timeout sets the wait)"
        ) from None


class _VmRunner:
    """The Relax VM on a (local or remote) device; subclasses say how the module is obtained."""

    where = "?"
    #: seconds each call to the device may take (None: local, called directly)
    timeout: Optional[float] = None

    def __init__(self, module, dev, batch: int, input_shape: list[int]):
        from tvm import runtime

        self.dev = dev
        self.batch = batch
        self.input_shape = input_shape
        try:
            self.vm = runtime.vm.VirtualMachine(module, dev)
        except Exception as e:
            raise BundleError(f"the bundle's library does not load as a Relax VM: {_first_line(e)}") from None

    def _tensor(self, x: np.ndarray):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        outs = []
        main = self.vm["main"]
        for i in range(0, len(inputs), self.batch):
            x = self._tensor(inputs[i : i + self.batch])
            y = _bounded(lambda: main(x), self.timeout, self.where)
            if not hasattr(y, "numpy"):  # a tuple: the model has one output, logits
                y = y[0]
            outs.append(y.numpy())
        return np.concatenate(outs, axis=0)

    def time(self, runs: int, warmup: int) -> list[float]:
        # One run per call: TVM's timing loop is C++, where Ctrl-C and SIGTERM wait until it returns;
        # between runs they act at once (and each run over RPC gets the timeout).
        x = self._tensor(np.zeros(self.input_shape, dtype=np.float32))
        once = self.vm.time_evaluator("main", self.dev, number=1, repeat=1)
        ms = []
        for i in range(warmup + runs):
            res = _bounded(lambda: once(x), self.timeout, self.where)
            if i >= warmup:
                ms.append(float(res.results[0]) * 1e3)
        return ms

    def close(self) -> None:
        self.vm = None


class LocalRunner(_VmRunner):
    """The library loaded into this process (a bundle built for this machine's arch)."""

    def __init__(self, root: Path, manifest: mf.Manifest, threads: Optional[int] = None):
        import tvm

        set_threads(threads or len(os.sched_getaffinity(0)))
        dev = tvm.cuda(0) if manifest.device == "cuda" else tvm.cpu(0)
        if manifest.device == "cuda" and not dev.exist:
            raise TargetError("this bundle is for CUDA and this machine has no CUDA device")
        try:
            module = tvm.runtime.load_module(str(root / mf.LIBRARY))
        except Exception as e:
            raise BundleError(f"cannot load {mf.LIBRARY}: {_first_line(e)}") from None
        self.where = f"this machine ({manifest.device})"
        super().__init__(module, dev, manifest.batch, manifest.input["shape"])


class RpcRunner(_VmRunner):
    """The library uploaded to a TVM RPC server (a board, or ``bhvit-export emulate``)."""

    def __init__(self, session, root: Path, manifest: mf.Manifest, where: str, threads: Optional[int] = None,
                 timeout: Optional[float] = None):
        from ..limits import DEFAULT_TIMEOUT_S

        self.session = session
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout

        def load():
            session.upload(str(root / mf.LIBRARY), "bhvit_model.so")
            module = session.load_module("bhvit_model.so")
            if threads:
                session.get_function("runtime.config_threadpool")(1, threads)
            return module

        try:
            module = _bounded(load, self.timeout, where)
        except TargetError:
            raise
        except Exception as e:
            raise TargetError(f"{where}: could not load the library on the device: {_first_line(e)}") from None
        dev = session.cuda(0) if manifest.device == "cuda" else session.cpu(0)
        self.where = where
        super().__init__(module, dev, manifest.batch, manifest.input["shape"])


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); a BhvitError for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BundleError(f"{what} {text!r}: expected HOST:PORT")
    return host, int(port)


def connect_rpc(text: str, timeout: Optional[float] = None):
    """A session with the RPC server at ``HOST:PORT`` (a peer silent for ``timeout`` s is an error)."""
    from tvm import rpc

    from ..limits import DEFAULT_TIMEOUT_S

    host, port = parse_hostport(text, "--rpc")
    try:
        return _bounded(lambda: rpc.connect(host, port, session_timeout=0), timeout or DEFAULT_TIMEOUT_S, f"--rpc {text}")
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"--rpc {text}: cannot connect ({_first_line(e)}); is the RPC server running?") from None


def connect_tracker(text: str, key: str, count: int = 1, timeout: Optional[float] = None) -> list:
    """``count`` sessions of devices with ``key`` from the RPC tracker at ``HOST:PORT``."""
    from tvm import rpc

    from ..limits import DEFAULT_TIMEOUT_S

    host, port = parse_hostport(text, "--tracker")

    def sessions() -> list:
        tracker = rpc.connect_tracker(host, port)
        return [tracker.request(key, priority=1, session_timeout=0) for _ in range(count)]

    try:
        return _bounded(sessions, timeout or DEFAULT_TIMEOUT_S, f"--tracker {text}")
    except TargetError:
        raise
    except Exception as e:
        raise TargetError(f"--tracker {text} --key {key}: no device ({_first_line(e)})") from None


class NativeRunner:
    """The C++ runner of the bundle (``runtime/bhvit-run``), under qemu for a foreign arch."""

    def __init__(self, root: Path, manifest: mf.Manifest, threads: Optional[int] = None):
        if manifest.native is None:
            raise BundleError(f"{root}: this bundle has no native runner (compile it with the runner)")
        self.root, self.manifest, self.threads = root, manifest, threads
        self.where = f"native runner ({manifest.arch}" + (", qemu)" if manifest.arch != host_arch() else ")")
        self._tmp = tempfile.TemporaryDirectory(prefix="bhvit-verify-")

    def _call(self, inputs: np.ndarray, runs: int, warmup: int) -> tuple[np.ndarray, list[float]]:
        from bhvit_export.targets.native_run import run_native

        x = Path(self._tmp.name) / "inputs.npy"
        y = Path(self._tmp.name) / "outputs.npy"
        np.save(x, np.ascontiguousarray(inputs, dtype=np.float32), allow_pickle=False)
        ms = run_native(
            self.root / str(self.manifest.native["runner"]),
            self.root / mf.LIBRARY,
            x,
            y,
            arch=self.manifest.arch,
            batch=self.manifest.batch,
            runs=runs,
            warmup=warmup,
            threads=self.threads,
            lib_dir=self.root / mf.RUNTIME_DIR,
        )
        return np.load(y, allow_pickle=False), ms

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self._call(inputs, runs=1, warmup=0)[0]

    def time(self, runs: int, warmup: int) -> list[float]:
        x = np.zeros(self.manifest.input["shape"], dtype=np.float32)
        return self._call(x, runs=runs, warmup=warmup)[1]

    def close(self) -> None:
        self._tmp.cleanup()

