"""Paths a manifest names outside its ``files`` list: each must be a listed (so hashed) bundle file.

``verify --native`` executes ``native.runner`` and loads the libraries beside it; ``verify`` reads
the golden files and loads ``library``. A hash only protects what it covers, so a name that points
outside the bundle (absolute, ``..``) or at a file the ``files`` list does not cover would let an
edited manifest run any program on the device. Every such path passes the same checks as the listed
files -- relative, inside the bundle, listed, hashed -- or the bundle is refused.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Iterator

from ..errors import BundleError


def named_paths(obj: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(field, value)`` of every path-valued field of a parsed manifest.json (values unchecked)."""
    if "library" in obj:
        yield "library", obj["library"]
    golden = obj.get("golden")
    if isinstance(golden, dict):
        for key in ("inputs", "reference"):
            if key in golden:
                yield f"golden.{key}", golden[key]
    native = obj.get("native")
    if native is None:
        return
    if not isinstance(native, dict):
        raise BundleError(f"manifest.json: 'native' must be an object or null, got {type(native).__name__}")
    if "runner" not in native:
        raise BundleError("manifest.json: 'native' names no 'runner'")
    yield "native.runner", native["runner"]
    libs = native.get("libs", [])
    if not isinstance(libs, list):
        raise BundleError(f"manifest.json: 'native.libs' must be a list of paths, got {type(libs).__name__}")
    for i, lib in enumerate(libs):
        yield f"native.libs[{i}]", lib


def check_named_paths(obj: dict[str, Any], files: dict[str, Any]) -> None:
    """Refuse a path field that is not a safe relative path listed in ``files``."""
    for field, value in named_paths(obj):
        if not isinstance(value, str) or not value:
            raise BundleError(f"manifest.json: {field} must be a relative path, got {value!r}")
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or p.as_posix() != value:
            raise BundleError(f"manifest.json: {field} {value!r} points outside the bundle; refusing it")
        if value not in files:
            raise BundleError(
                f"manifest.json: {field} {value!r} is not a listed (hashed) file of the bundle; refusing it"
            )
