"""Build the native helpers (``bhvit-run``, ``bhvit-rpc-server``) for the host or aarch64.

Both are small C++17 programs over tvm-ffi's headers, linked against the TVM runtime libraries of
:mod:`bhvit_export.targets.runtime_libs`. The libraries are copied beside the binary and the binary carries
``rpath $ORIGIN``, so the output folder can be copied to a device as is. A build is skipped when
the folder already holds a binary stamped with the same hash of (source, compiler, flags, TVM
versions): compiling against the runtime headers takes a few seconds per binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Union

from bhvit_export.errors import TargetError
from bhvit_export.targets.runtime_libs import cache_root, include_dirs, runtime_libs, versions
from bhvit_export.targets.toolchain import compiler, host_arch, normalize_arch

NATIVE_DIR = Path(__file__).resolve().parent / "native"
RUNNER = "bhvit-run"
RPC_SERVER = "bhvit-rpc-server"
SOURCES = {RUNNER: "runner.cc", RPC_SERVER: "rpc_server.cc"}
#: ``--no-as-needed`` keeps libtvm_runtime as NEEDED although the code only calls tvm-ffi: the VM,
#: the library loader and rpc.ServerLoop are registered by its static initialisers.
_FLAGS = ["-std=c++17", "-O2", "-Wall"]
_LINK = ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"]

PathLike = Union[str, Path]


def _key(name: str, arch: str, cxx: str) -> str:
    h = hashlib.sha256()
    for part in (name, arch, os.path.basename(cxx), " ".join(_FLAGS + _LINK), *versions()):
        h.update(part.encode() + b"\0")
    h.update((NATIVE_DIR / SOURCES[name]).read_bytes())
    for header in sorted(NATIVE_DIR.glob("*.h")):  # included by the sources
        h.update(header.read_bytes())
    return h.hexdigest()[:16]


def _place_libs(libs: list[Path], out_dir: Path) -> None:
    """Copy the runtime libraries beside the binary (atomically, only when they differ)."""
    for lib in libs:
        dest = out_dir / lib.name
        src = lib.stat()
        if dest.exists() and (dest.stat().st_size, dest.stat().st_mtime_ns) == (src.st_size, src.st_mtime_ns):
            continue  # copy2 keeps the mtime: same size and mtime means the same library
        tmp = out_dir / f".{lib.name}.{os.getpid()}.tmp"
        shutil.copy2(lib, tmp)
        os.replace(tmp, dest)


def _build(name: str, arch: str, out_dir: Optional[PathLike]) -> Path:
    arch = normalize_arch(arch)
    cxx = compiler(arch)
    key = _key(name, arch, cxx)
    folder = Path(out_dir) if out_dir is not None else cache_root() / "native" / f"{arch}-{name}-{key}"
    binary, stamp = folder / name, folder / f".{name}.key"
    libs = runtime_libs(arch)
    folder.mkdir(parents=True, exist_ok=True)
    _place_libs(libs, folder)
    if binary.is_file() and stamp.is_file() and stamp.read_text() == key:
        return binary
    includes = [f"-I{d}" for d in include_dirs()]
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-") as tmp:
        out = Path(tmp) / name
        cmd = [cxx, *_FLAGS, str(NATIVE_DIR / SOURCES[name]), *includes, f"-L{folder}",
               f"-Wl,-rpath-link,{folder}", *_LINK, "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines() or ["?"]
            raise TargetError(f"building {name} for {arch} failed: {errors[0]}")
        os.replace(out, binary)
    stamp.write_text(key)
    return binary


def build_runner(arch: str, out_dir: Optional[PathLike] = None) -> Path:
    """``bhvit-run`` for ``arch`` in ``out_dir`` (default: a cache folder keyed by the source hash)."""
    return _build(RUNNER, arch, out_dir)


def build_rpc_server(arch: str, out_dir: Optional[PathLike] = None) -> Path:
    """``bhvit-rpc-server`` for ``arch`` in ``out_dir`` (default: a cache folder keyed by the source hash)."""
    return _build(RPC_SERVER, arch, out_dir)


def export_library(executable, path: PathLike, arch: str) -> Path:
    """Write a built Relax ``VMExecutable`` as a shared library loadable on ``arch``.

    The host links with its default compiler; aarch64 links with the cross g++ (found through
    :func:`bhvit_export.targets.toolchain.require`, so a missing one is a TargetError with the apt package).
    """
    from tvm.support import cc

    out = Path(path)
    arch = normalize_arch(arch)
    fcompile = None if arch == host_arch() else cc.cross_compiler(compiler(arch))
    executable.export_library(str(out), fcompile=fcompile)
    return out
