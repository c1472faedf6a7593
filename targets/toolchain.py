"""Find the external tools the device targets need, and fail with the fix when one is missing.

Cross-compiling and emulating aarch64 needs programs pip cannot provide (a cross g++, qemu-user,
the CUDA toolkit). Every lookup goes through :func:`require`, so a missing tool is always one
:class:`~bhvit_export.errors.TargetError` line naming the package that provides it, never a
``FileNotFoundError`` from deep inside ``subprocess``.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Optional

from bhvit_export.errors import TargetError
from bhvit_export.targets.arch import ARCHES, Tool, arch_for_elf_machine, arch_record

__all__ = ["TOOLS", "Tool", "compiler", "cross_compiler", "elf_arch", "emulated_arches", "host_arch", "normalize_arch",
           "qemu_command", "require", "require_tool"]

#: Programs that are not per architecture; the cross compilers and qemu-user of each architecture
#: come from its record (``targets/arch.py``) as ``<arch>-g++`` and ``qemu-<arch>``.
TOOLS: dict[str, Tool] = {
    "nvcc": Tool("nvcc", "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) and put its bin/ on PATH"),
    "g++": Tool("g++", "install it with `apt-get install g++`"),
    **{f"{rec.name}-g++": rec.cross_compiler for rec in ARCHES.values()},
    **{rec.qemu.executable: rec.qemu for rec in ARCHES.values()},
}


def normalize_arch(arch: str) -> str:
    """The record name of ``arch`` (``x86_64``, ``aarch64``; aliases such as ``amd64``/``arm64`` too);
    anything else is a TargetError."""
    return arch_record(arch).name


def host_arch() -> str:
    """The architecture of this machine, normalised."""
    return normalize_arch(platform.machine())


def emulated_arches() -> list[str]:
    """The architectures qemu-user runs here: every record but this machine's."""
    here = host_arch()
    return [name for name in ARCHES if name != here]


def require(tool: str) -> str:
    """Absolute path of ``tool`` (a key of :data:`TOOLS`), or a TargetError saying how to install it."""
    try:
        spec = TOOLS[tool]
    except KeyError:
        raise TargetError(f"unknown tool '{tool}': expected one of {', '.join(sorted(TOOLS))}") from None
    return require_tool(spec)


def require_tool(spec: Tool) -> str:
    """Absolute path of the program ``spec``, or a TargetError saying how to install it."""
    found = shutil.which(spec.executable)
    if found is None:
        raise TargetError(f"{spec.executable} not found: {spec.install}")
    return found


def compiler(arch: str) -> str:
    """The C++ compiler producing binaries for ``arch`` on this host (host g++ or the record's cross g++)."""
    arch = normalize_arch(arch)
    if arch == host_arch():
        return require("g++")
    return require_tool(arch_record(arch).cross_compiler)


def cross_compiler(arch: str) -> Optional[str]:
    """The compiler that links a library for ``arch``: None (TVM's default, the native compiler) on a
    host of that architecture, else the record's cross g++ (a TargetError naming its package if missing)."""
    arch = normalize_arch(arch)
    return None if arch == host_arch() else require_tool(arch_record(arch).cross_compiler)


def qemu_command(arch: str) -> list[str]:
    """The command prefix that runs an ``arch`` binary here: ``[]`` for the host arch.

    binfmt_misc is not assumed to be mounted (it is not in containers/CI), so qemu is called
    explicitly with the cross sysroot for the dynamic loader and glibc.
    """
    arch = normalize_arch(arch)
    if arch == host_arch():
        return []
    rec = arch_record(arch)
    qemu = require_tool(rec.qemu)
    if not (rec.sysroot / "lib").is_dir():
        raise TargetError(f"{arch} sysroot {rec.sysroot} not found: {rec.cross_compiler.install}")
    return [qemu, "-L", str(rec.sysroot)]


def elf_arch(path: Path | str) -> str | None:
    """Architecture an ELF file (library or program) is built for; None if not a known ELF.

    Used to turn "cannot open shared object file" from a wrong-arch dlopen into a clear message.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:  # little-endian only
        return None
    rec = arch_for_elf_machine(int.from_bytes(head[18:20], "little"))
    return rec.name if rec is not None else None
