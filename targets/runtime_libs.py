"""The TVM runtime shared libraries a device needs, for the host or a cross architecture.

A compiled Relax VM library needs ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of *exactly* the
TVM/tvm-ffi versions that compiled it (the VM executable format and the FFI ABI are not stable
across versions). For the host they come from the installed ``tvm``/``tvm_ffi`` packages; for
another architecture from the official manylinux wheels of the same versions (the platform
tag is in its record, ``targets/arch.py``), downloaded once with
``pip download`` and cached (only those two files are kept; the tvm wheel is ~95 MB).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bhvit_export.errors import TargetError
from bhvit_export.targets.arch import arch_record
from bhvit_export.targets.toolchain import host_arch, normalize_arch

RUNTIME = "libtvm_runtime.so"
FFI = "libtvm_ffi.so"
#: Where each library sits inside its wheel (and inside the installed package).
_IN_WHEEL = {RUNTIME: ("apache-tvm", "tvm/lib/" + RUNTIME), FFI: ("apache-tvm-ffi", "tvm_ffi/lib/" + FFI)}
#: ~100 MB in all; generous for slow CI links, but never hang forever.
_DOWNLOAD_TIMEOUT_S = 900


def versions() -> tuple[str, str]:
    """(apache-tvm version, apache-tvm-ffi version) installed here."""
    try:
        return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")
    except importlib.metadata.PackageNotFoundError as err:
        raise TargetError(f"{err.name} is not installed: install it with `pip install {err.name}`") from None


def cache_root() -> Path:
    """``$BHVIT_CACHE`` or ``~/.cache/bhvit-export``: downloaded runtimes and built binaries."""
    env = os.environ.get("BHVIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bhvit-export"


def include_dirs() -> list[Path]:
    """Header dirs for native code: tvm-ffi's and dlpack's (from the installed ``tvm_ffi``).

    Only tvm-ffi headers are usable: TVM's own ``tvm/runtime/*.h`` need dmlc/other headers the
    wheel does not ship.
    """
    import tvm_ffi

    root = Path(tvm_ffi.__file__).parent
    dirs = [root / "include", root / "3rdparty" / "dlpack" / "include"]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise TargetError(f"tvm-ffi headers not found at {missing[0]}: reinstall apache-tvm-ffi")
    return dirs


def _host_libs() -> list[Path]:
    import tvm
    import tvm_ffi

    libs = [Path(tvm.__file__).parent / "lib" / RUNTIME, Path(tvm_ffi.__file__).parent / "lib" / FFI]
    for lib in libs:
        if not lib.is_file():
            raise TargetError(f"{lib} not found: reinstall apache-tvm / apache-tvm-ffi")
    return libs


def _download(arch: str, dest: Path) -> None:
    """Fetch the two wheels for ``arch`` and extract the libraries into ``dest`` (must not exist)."""
    tvm_ver, ffi_ver = versions()
    platform_tag = arch_record(arch).wheel_platform
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dl-") as tmp:
        wheels, staged = Path(tmp) / "wheels", Path(tmp) / "libs"
        staged.mkdir()
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", platform_tag, "--python-version", py, "--disable-pip-version-check",
            "-d", str(wheels), f"apache-tvm=={tvm_ver}", f"apache-tvm-ffi=={ffi_ver}",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc = subprocess.CompletedProcess(cmd, 1, "", f"pip download timed out after {_DOWNLOAD_TIMEOUT_S} s")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TargetError(
                f"could not download the {arch} TVM runtime (apache-tvm=={tvm_ver}, apache-tvm-ffi=={ffi_ver}"
                f" for {platform_tag}): {last}; check network access to PyPI, or put the two wheels'"
                f" {RUNTIME} and {FFI} into {dest} yourself"
            )
        for name, (dist, member) in _IN_WHEEL.items():
            prefix = dist.replace("-", "_") + "-"
            found = sorted(wheels.glob(prefix + "*.whl"))
            if not found:
                raise TargetError(f"pip download produced no {dist} wheel for {arch} in {wheels}")
            with zipfile.ZipFile(found[0]) as whl:
                with whl.open(member) as src, open(staged / name, "wb") as out:
                    shutil.copyfileobj(src, out)
        try:
            os.rename(staged, dest)  # atomic: a concurrent download either wins or finds it done
        except OSError:
            if not all((dest / n).is_file() for n in _IN_WHEEL):
                raise


def runtime_dir(arch: str) -> Path:
    """Cache folder holding the ``arch`` runtime libraries (downloaded on first use)."""
    arch = normalize_arch(arch)  # every architecture record names its wheels' platform tag
    tvm_ver, ffi_ver = versions()
    dest = cache_root() / "runtime" / f"{arch}-tvm{tvm_ver}-ffi{ffi_ver}"
    if not all((dest / n).is_file() for n in _IN_WHEEL):
        _download(arch, dest)
    return dest


def runtime_libs(arch: str) -> list[Path]:
    """``[libtvm_runtime.so, libtvm_ffi.so]`` for ``arch``: installed ones for the host, cached wheels otherwise."""
    arch = normalize_arch(arch)
    if arch == host_arch():
        return _host_libs()
    folder = runtime_dir(arch)
    return [folder / RUNTIME, folder / FFI]
