"""The bundle manifest: what a bundle holds, and the checks ``verify`` runs before loading anything.

A bundle is copied to devices by hand (scp, USB sticks), so it is untrusted input: every file is
listed with its SHA-256 and size, and :func:`check_bundle` refuses a bundle with a missing, extra
executable, or altered file *before* any shared library in it is opened (loading a library runs its
constructors). A bundle written by another tool or TVM version is reported, since the runtime that
loads the library must match the one that compiled it.

Layout (paths relative to the bundle root)::

    manifest.json            this file's content (not listed in itself)
    model.so                 the compiled Relax VM executable (TVM ``export_library``)
    golden/inputs.npy        float32 [G, 3, S, S], G a multiple of the batch
    golden/reference.npy     float32 [G, classes], the reference model's logits on those inputs
    runtime/                 optional: native runner and the target's TVM runtime libraries
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import BundleError

FORMAT = "bhvit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
GOLDEN_INPUTS = "golden/inputs.npy"
GOLDEN_REFERENCE = "golden/reference.npy"
RUNTIME_DIR = "runtime"
#: The spec's end-to-end tolerance ("How to compare outputs of a binary network").
DEFAULT_TOLERANCES = {"min_cosine": 0.9995, "max_abs_over_std": 0.05, "min_top1_agreement": 1.0}


def sha256_file(path: Path) -> str:
    """Streamed SHA-256 of a file (libraries can be tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (see the module docstring for the layout)."""

    tool_version: str
    tvm_version: str
    tvm_ffi_version: str
    target: dict[str, Any]  # TargetSpec.to_json(): name, tvm, arch, device
    model: dict[str, Any]  # source file name + sha256, config, paper_config
    input: dict[str, Any]  # name, shape (with the compiled batch), dtype
    output: dict[str, Any]
    golden: dict[str, Any]  # inputs, reference, source, count
    tolerances: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    native: Optional[dict[str, Any]] = None  # runner + libs, relative paths
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {sha256, bytes}

    @property
    def arch(self) -> str:
        return str(self.target["arch"])

    @property
    def device(self) -> str:
        return str(self.target["device"])

    @property
    def batch(self) -> int:
        return int(self.input["shape"][0])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool": {"name": "bhvit-export", "version": self.tool_version},
            "tvm": {"version": self.tvm_version, "ffi_version": self.tvm_ffi_version},
            "target": self.target,
            "model": self.model,
            "library": LIBRARY,
            "input": self.input,
            "output": self.output,
            "golden": self.golden,
            "tolerances": self.tolerances,
            "native": self.native,
            "files": {k: self.files[k] for k in sorted(self.files)},
        }

    def dumps(self) -> str:
        """Deterministic text: same bundle content, same manifest bytes."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, obj: Any) -> "Manifest":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise BundleError("manifest.json is not a bhvit-export bundle manifest")
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version!r} is not supported by this bhvit-export "
                f"(it reads version {FORMAT_VERSION}); recompile the bundle with this version"
            )
        try:
            files = obj["files"]
            if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
                for v in files.values()
            ):
                raise BundleError("manifest.json: 'files' must map paths to {sha256, bytes}")
            return cls(
                tool_version=str(obj["tool"]["version"]),
                tvm_version=str(obj["tvm"]["version"]),
                tvm_ffi_version=str(obj["tvm"]["ffi_version"]),
                target=dict(obj["target"]),
                model=dict(obj["model"]),
                input=dict(obj["input"]),
                output=dict(obj["output"]),
                golden=dict(obj["golden"]),
                tolerances=dict(obj["tolerances"]),  # checked by verify.tolerances: a missing one is an error
                native=dict(obj["native"]) if obj.get("native") else None,
                files=dict(files),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest.json is incomplete or malformed ({type(e).__name__}: {e})") from None


def _safe_relpath(root: Path, rel: str) -> Path:
    """``root / rel`` for a manifest path, refusing absolute paths and ``..`` (path traversal)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel != p.as_posix() or not rel:
        raise BundleError(f"manifest.json lists an unsafe path {rel!r}")
    return root / p


def _relpaths(root: Path) -> list[str]:
    """Every regular file under ``root`` except the manifest (refusing links and special files)."""
    from .tree import bundle_files

    return bundle_files(root, skip=MANIFEST)


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {sha256, bytes}}`` of every regular file under ``root`` except the manifest."""
    return {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in _relpaths(root)
    }


def read_manifest(root: Path) -> Manifest:
    """Parse ``root/manifest.json`` (a BundleError for anything that is not one of ours)."""
    if not root.exists():
        raise BundleError(f"{root}: no such bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: a bundle is a folder (or a .tar made by compile)")
    path = root / MANIFEST
    if not os.path.lexists(path):
        raise BundleError(f"{root}: no manifest.json; not a bundle written by bhvit-export compile")
    if os.path.islink(path):
        raise BundleError(f"{root}: manifest.json is a symbolic link; a bundle holds only regular files and folders")
    from ..limits import read_json

    return Manifest.from_json(read_json(path, str(path), BundleError))


@dataclass
class VersionNote:
    """A difference between who built the bundle and who runs it (reported, not fatal by itself)."""

    what: str
    bundle: str
    here: str

    def line(self) -> str:
        return f"{self.what}: bundle built with {self.bundle}, this machine has {self.here}"


def check_bundle(root: Path) -> Manifest:
    """Verify every file's size and SHA-256 against the manifest; load nothing.

    Refuses (BundleError, exit 2) a missing file, an altered file, and any file that is not listed
    (an extra library could be picked up by the loader). Returns the manifest.
    """
    from .fields import check_fields
    from .named_paths import check_named_paths

    manifest = read_manifest(root)
    check_fields(manifest)
    present = _relpaths(root)  # first: refuses links and FIFOs before anything is opened
    check_named_paths(manifest.to_json(), manifest.files)
    for rel, entry in sorted(manifest.files.items()):
        path = _safe_relpath(root, rel)
        if not path.is_file():
            raise BundleError(f"{root}: {rel} is missing (listed in manifest.json)")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{root}: {rel} was altered (its SHA-256 does not match manifest.json); refusing to load it")
    extra = sorted(set(present) - set(manifest.files))  # names only: the listed ones were hashed above
    if extra:
        raise BundleError(f"{root}: {extra[0]} is not listed in manifest.json; refusing a bundle with unlisted files")
    for required in (LIBRARY, GOLDEN_INPUTS, GOLDEN_REFERENCE):
        if required not in manifest.files:
            raise BundleError(f"{root}: manifest.json does not list {required}")
    return manifest


def version_notes(manifest: Manifest) -> list[VersionNote]:
    """Differences between the bundle's tool/TVM versions and this machine's (empty when equal)."""
    from .. import __version__

    notes = []
    if manifest.tool_version != __version__:
        notes.append(VersionNote("bhvit-export", manifest.tool_version, __version__))
    try:
        import tvm
        import tvm_ffi

        here_tvm, here_ffi = tvm.__version__, tvm_ffi.__version__
    except ImportError:
        here_tvm = here_ffi = "no TVM"
    if manifest.tvm_version != here_tvm:
        notes.append(VersionNote("TVM", manifest.tvm_version, here_tvm))
    if manifest.tvm_ffi_version != here_ffi:
        notes.append(VersionNote("tvm-ffi", manifest.tvm_ffi_version, here_ffi))
    return notes
