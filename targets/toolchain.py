"""Find the external tools the device targets need, and fail with the fix when one is missing.

Cross-compiling and emulating aarch64 needs programs pip cannot provide (a cross g++, qemu-user,
the CUDA toolkit). Every lookup goes through :func:`require`, so a missing tool is always one
:class:`~bhvit_export.errors.TargetError` line naming the package that provides it, never a
``FileNotFoundError`` from deep inside ``subprocess``.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from bhvit_export.errors import TargetError

#: Where Debian/Ubuntu's ``libc6-dev-arm64-cross`` (pulled in by ``g++-aarch64-linux-gnu``) puts
#: the aarch64 glibc and loader; qemu-user needs it as ``-L`` since binfmt_misc is not relied on.
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")


@dataclass(frozen=True)
class Tool:
    """An external program: the executable to look for and how a user gets it."""

    executable: str
    install: str


TOOLS: dict[str, Tool] = {
    "aarch64-g++": Tool("aarch64-linux-gnu-g++", "install it with `apt-get install g++-aarch64-linux-gnu`"),
    "qemu-aarch64": Tool("qemu-aarch64", "install it with `apt-get install qemu-user`"),
    "nvcc": Tool("nvcc", "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) and put its bin/ on PATH"),
    "g++": Tool("g++", "install it with `apt-get install g++`"),
}

#: Architectures we build native binaries for, normalised from ``platform.machine()`` spellings.
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def normalize_arch(arch: str) -> str:
    """``"x86_64"`` or ``"aarch64"`` (accepts ``amd64``/``arm64``); anything else is a TargetError."""
    try:
        return _ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise TargetError(f"unsupported architecture '{arch}': expected one of x86_64, aarch64") from None


def host_arch() -> str:
    """The architecture of this machine, normalised."""
    return normalize_arch(platform.machine())


def require(tool: str) -> str:
    """Absolute path of ``tool`` (a key of :data:`TOOLS`), or a TargetError saying how to install it."""
    try:
        spec = TOOLS[tool]
    except KeyError:
        raise TargetError(f"unknown tool '{tool}': expected one of {', '.join(sorted(TOOLS))}") from None
    found = shutil.which(spec.executable)
    if found is None:
        raise TargetError(f"{spec.executable} not found: {spec.install}")
    return found


def compiler(arch: str) -> str:
    """The C++ compiler producing binaries for ``arch`` on this host (host g++ or the cross g++)."""
    arch = normalize_arch(arch)
    if arch == host_arch():
        return require("g++")
    if arch == "aarch64":
        return require("aarch64-g++")
    raise TargetError(f"no cross compiler for {arch} on a {host_arch()} host")


def qemu_command(arch: str) -> list[str]:
    """The command prefix that runs an ``arch`` binary here: ``[]`` for the host arch.

    binfmt_misc is not assumed to be mounted (it is not in containers/CI), so qemu is called
    explicitly with the cross sysroot for the dynamic loader and glibc.
    """
    arch = normalize_arch(arch)
    if arch == host_arch():
        return []
    if arch == "aarch64":
        qemu = require("qemu-aarch64")
        if not (AARCH64_SYSROOT / "lib").is_dir():
            raise TargetError(
                f"aarch64 sysroot {AARCH64_SYSROOT} not found: install it with `apt-get install g++-aarch64-linux-gnu`"
            )
        return [qemu, "-L", str(AARCH64_SYSROOT)]
    raise TargetError(f"cannot emulate {arch} on a {host_arch()} host")


#: ELF ``e_machine`` values of the architectures above.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


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
    return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little"))
