"""Refuse a bundle the CPU that would run it cannot run, before its library is loaded.

A library built with ``--mcpu sapphirerapids`` may use AVX512-FP16 and AMX; on a Zen 4 it loads
fine and dies with SIGILL mid-run. ``compile`` records the features the build may use
(``target.cpu_features`` in ``manifest.json``, LLVM names), and ``verify`` compares them with the
features of the CPU that will run the library: this machine (local, and ``--native`` on its own
arch), the runner under qemu (``--native`` for aarch64: qemu's emulated CPU), or the device
(``--rpc``/``--tracker``: it is asked through ``bhvit.cpu_features``, which ``bhvit-export emulate``
and ``bhvit-rpc-server`` register; TVM's Python RPC server has no such function, so there the check
is skipped with a note). A manifest without the field (older bundles) is verified with a note.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

from bhvit_export.targets import cpu_features as cf
from bhvit_export.targets.toolchain import host_arch

from ..bundle import manifest as mf
from ..errors import BundleError

#: What "cannot tell" looks like: the CPU's name (for messages) and its LLVM features, or None.
CpuInfo = tuple[str, Optional[frozenset[str]]]


def _fix(manifest: mf.Manifest, local: bool) -> str:
    if manifest.arch == "x86_64":
        where = "on this machine" if local else "on the device (or with --mcpu naming its CPU)"
        return f"recompile with --mcpu native/--target x86_64 {where}"
    return "recompile with --target aarch64 --mcpu naming the device's CPU (e.g. cortex-a72)"


def check(manifest: mf.Manifest, cpu: CpuInfo, where: str, *, local: bool) -> list[str]:
    """Raise BundleError naming what ``cpu`` lacks of the bundle's features; else the notes to show."""
    required = manifest.target.get("cpu_features")
    if required is None:
        return [
            "the manifest records no CPU features (a bundle from an older bhvit-export): not checked; "
            "a CPU without an extension the library uses stops it with SIGILL"
        ]
    name, have = cpu
    if have is None:
        return [f"{where} did not report its CPU features: the {len(required)} the bundle needs were not checked"]
    missing = cf.missing(required, have)
    if missing:
        built = manifest.target.get("cpu") or manifest.target.get("name", "?")
        raise BundleError(
            f"this bundle was built for {built} and needs {', '.join(missing)}; "
            f"{name} lacks them; {_fix(manifest, local)}"
        )
    return []


def runs_here(manifest: mf.Manifest) -> bool:
    """False only when this CPU is known to lack a feature the bundle records."""
    have = this_cpu()[1]
    required = manifest.target.get("cpu_features")
    return have is None or required is None or not cf.missing(required, have)


def this_cpu() -> CpuInfo:
    """This machine's CPU (honours ``BHVIT_PRETEND_CPU``)."""
    try:
        return f"this CPU ({cf.host_cpu()})", cf.host_features()
    except (RuntimeError, ImportError):
        return "this CPU", None


def runner_cpu(root: Path, manifest: mf.Manifest) -> CpuInfo:
    """The CPU the bundle's native runner runs on: this one, or qemu's for a foreign arch."""
    if manifest.arch == host_arch():
        return this_cpu()
    from bhvit_export.targets.native_run import native_command

    if manifest.native is None:
        return "qemu's CPU", None
    try:
        cmd, env = native_command(root / str(manifest.native["runner"]), manifest.arch, root / mf.RUNTIME_DIR)
        out = subprocess.run([*cmd, "--cpu-features"], capture_output=True, text=True, env=env, timeout=60).stdout
    except Exception:  # an old runner without the flag, a missing qemu: the run itself reports that
        return "qemu's CPU", None
    return _reported(f"qemu's {manifest.arch} CPU", out, manifest.arch)


def session_cpu(session: Any, manifest: mf.Manifest, where: str) -> CpuInfo:
    """The RPC device's CPU, as its ``bhvit.cpu_features`` reports it (None: no such function)."""
    name = f"the CPU of {where}"
    try:
        report = str(session.get_function("bhvit.cpu_features")())
    except Exception:  # TVM's Python server, or any server without our function
        return name, None
    return _reported(name, report, manifest.arch)


def _reported(name: str, text: str, arch: str) -> CpuInfo:
    parsed = cf.parse_report(text)
    if parsed is None or parsed[0] != arch:
        return name, None
    return name, parsed[1]
