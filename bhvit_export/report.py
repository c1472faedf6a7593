"""The envelope every ``--json`` report shares: schema version, versions, output hashes; and the error object.

A JSON report is read by scripts long after it was written, on another machine: it must say which
format it is (``schema_version``), which tool and library versions produced it (the numbers of a
compile or a bench depend on TVM, torch and onnxruntime), and which bytes it describes (the SHA-256 of
every file written). Versions are read from the installed distributions' metadata, so no heavy
module is imported for them. On an error with ``--json`` the CLI prints :func:`error_object` on stdout,
so a script always gets one JSON object there.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

#: Bumped when a field of an existing report changes meaning or disappears (new fields do not bump it).
SCHEMA_VERSION = 1
#: distribution name -> key in ``versions``
DISTRIBUTIONS = {
    "bhvit-export": "bhvit-export",
    "apache-tvm": "tvm",
    "apache-tvm-ffi": "tvm-ffi",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
}


def versions() -> dict[str, Optional[str]]:
    """Installed versions (None where a package is absent, e.g. torch on a device)."""
    from . import __version__

    out: dict[str, Optional[str]] = {}
    for dist, key in DISTRIBUTIONS.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["bhvit-export"] = __version__
    out["python"] = platform.python_version()
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """``[{path, bytes, sha256}]`` of every file written (a folder: each file in it, sorted)."""
    out = []
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out += [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files if f.is_file()]
    return out


def envelope(command: str, body: dict[str, Any], outputs: Iterable[Path] = ()) -> dict[str, Any]:
    """``body`` with ``schema_version``, ``command``, ``versions`` and ``outputs`` added."""
    return {**body, "schema_version": SCHEMA_VERSION, "command": command, "versions": versions(),
            "outputs": output_files(outputs)}


def error_object(message: str, stage: str, exit_code: int, command: Optional[str] = None) -> dict[str, Any]:
    """What ``--json`` prints on stdout for a failed command (the one-line message is on stderr too)."""
    return {"error": message, "stage": stage, "exit_code": exit_code, "command": command,
            "schema_version": SCHEMA_VERSION}
