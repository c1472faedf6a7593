"""Run a compiled Relax VM library with the native ``bhvit-run`` (under qemu for aarch64).

The runner, not Python, does the timing: what is measured is ``main`` alone on the device (or in
the emulator), without RPC round trips or Python overhead.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional, Union

from bhvit_export.errors import TargetError
from bhvit_export.targets.toolchain import elf_arch, normalize_arch, qemu_command

PathLike = Union[str, Path]


def native_command(runner: PathLike, arch: str, lib_dir: Optional[PathLike] = None) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) that executes ``runner`` for ``arch`` on this machine.

    ``lib_dir`` (where libtvm_runtime/libtvm_ffi are, when not beside the binary) goes to the
    guest's ``LD_LIBRARY_PATH``: through qemu's ``-E`` for emulated binaries, so that qemu itself
    (an x86 program) never sees the foreign libraries.
    """
    env = dict(os.environ)
    prefix = qemu_command(normalize_arch(arch))
    if lib_dir is not None:
        if prefix:
            prefix = [*prefix, "-E", f"LD_LIBRARY_PATH={lib_dir}"]
        else:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib_dir), env.get("LD_LIBRARY_PATH")]))
    return [*prefix, str(runner)], env


def run_native(
    runner: PathLike,
    lib: PathLike,
    inputs: PathLike,
    outputs: PathLike,
    *,
    arch: str,
    batch: int = 1,
    runs: int = 10,
    warmup: int = 2,
    threads: Optional[int] = None,
    lib_dir: Optional[PathLike] = None,
    timeout: Optional[float] = None,
) -> list[float]:
    """Run ``lib``'s ``main`` on ``inputs`` (.npy ``[G, ...]``), write ``outputs``; return the latencies (ms).

    ``threads`` sets ``TVM_NUM_THREADS`` (default: the runtime's choice). A failing runner is a
    TargetError carrying its one-line message.
    """
    arch = normalize_arch(arch)
    cmd, env = native_command(runner, arch, lib_dir)  # first: a missing qemu is the real problem
    for path, what in ((runner, "runner"), (lib, "library")):
        if not Path(path).is_file():
            raise TargetError(f"{what} {path} not found")
        built = elf_arch(path)
        if built is not None and built != arch:
            raise TargetError(f"{what} {path} is built for {built}, not {arch}: compile it for the {arch} target")
    if threads is not None:
        env["TVM_NUM_THREADS"] = str(threads)
    cmd += [str(lib), str(inputs), str(outputs), "--batch", str(batch), "--runs", str(runs), "--warmup", str(warmup)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TargetError(f"{Path(runner).name} did not finish within {timeout:g} s on {lib}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}, no message"]
        raise TargetError(f"{Path(runner).name} failed: {lines[-1]}")
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        return [float(t) for t in report["latency_ms"]]
    except (IndexError, ValueError, KeyError) as err:
        raise TargetError(f"{Path(runner).name} printed no latency report: {proc.stdout[-200:]!r}") from err
