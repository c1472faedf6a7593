"""Assemble a bundle atomically: a temporary folder, filled, hashed, then renamed (or packed) into place.

``compile`` trusts nothing half-written and neither may ``verify``, so a bundle only appears at its
path once every file is in it and ``manifest.json`` lists them with their SHA-256: the caller's
``fill`` writes the files into a temporary folder and returns the manifest (without ``files``); this
module hashes what is there, writes the manifest, opens the modes for others to read, packs the
``.tar`` form if asked, and renames the result into place. A failure anywhere leaves nothing at the
path, and an OS error (disk full, read-only folder) is one :class:`BundleError` with the OS's reason.

Like the rest of the package it imports neither torch nor onnx nor TVM: what goes into ``model.so``
is the caller's business.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import BundleError
from . import manifest as mf


def write_golden(root: Path, inputs: np.ndarray, reference: np.ndarray) -> None:
    """``golden/inputs.npy`` and ``golden/reference.npy`` (never pickled)."""
    (root / "golden").mkdir()
    np.save(root / mf.GOLDEN_INPUTS, inputs, allow_pickle=False)
    np.save(root / mf.GOLDEN_REFERENCE, reference, allow_pickle=False)


def open_modes(root: Path) -> None:
    """mkdtemp makes 0700 folders; a bundle is meant to be copied and read by others."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o755)
        for f in filenames:
            p = Path(dirpath) / f
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


def write_bundle(
    out: Path,
    fill: Callable[[Path], mf.Manifest],
    *,
    may_replace: Optional[Callable[[Path], None]] = None,
) -> mf.Manifest:
    """Write the bundle at ``out`` (a folder, or the archive form when it ends in ``.tar``).

    ``fill(root)`` writes the files into the empty folder ``root`` and returns their manifest;
    ``may_replace(out)`` runs right before an existing ``out`` is replaced (see ``atomic_path``).
    Returns the manifest as written, ``files`` included.
    """
    from ..atomic import atomic_path
    from . import archive

    as_tar = out.suffix == ".tar"
    try:
        with atomic_path(out, directory=not as_tar, may_replace=may_replace) as tmp_out:
            root = tmp_out if not as_tar else Path(tempfile.mkdtemp(prefix=".bundle.", dir=out.parent))
            try:
                manifest = fill(root)
                manifest.files = mf.file_entries(root)
                (root / mf.MANIFEST).write_text(manifest.dumps(), encoding="utf-8")
                open_modes(root)
                if as_tar:
                    archive.pack(root, tmp_out)
                    os.chmod(tmp_out, 0o644)
            finally:
                if as_tar:
                    shutil.rmtree(root, ignore_errors=True)
    except OSError as e:  # ENOSPC, EACCES, EROFS while writing: the OS's reason; nothing is left behind
        from ..output_target import os_reason

        raise BundleError(f"cannot write {out}: {os_reason(e)}") from None
    return manifest


__all__ = ["open_modes", "write_bundle", "write_golden"]
