"""Whether an existing ``compile -o`` target is a bundle we wrote, and so may be replaced.

``compile -o DIR`` replaces an earlier bundle, which means deleting it. Deleting a folder because it
holds some ``manifest.json`` would delete a user's project folder that happens to have one. So a
folder (or ``.tar``) is ours only when its manifest carries our format tag and lists every file in
it; an empty folder holds nothing to lose. Anything else is refused, before the build, and checked
again right before the replacement (the folder may have changed during a build of minutes).
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Any, Optional

from ..errors import BhvitError, BundleError
from ..limits import MAX_JSON_BYTES, parse_json, read_json
from .archive import MAX_MEMBERS
from .manifest import FORMAT, MANIFEST
from .tree import bundle_files


def _listed(obj: Any, present: list[str]) -> Optional[str]:
    """Why a parsed manifest does not make the listed files ours (None when it does)."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return f"its {MANIFEST} is not a bhvit-export bundle manifest"
    files = obj.get("files")
    if not isinstance(files, dict):
        return f"its {MANIFEST} lists no files"
    extra = sorted(set(present) - set(files))
    if extra:
        return f"it holds {extra[0]}, which its {MANIFEST} does not list"
    return None


def _folder(path: Path) -> Optional[str]:
    if not any(path.iterdir()):
        return None
    try:
        present = bundle_files(path, skip=MANIFEST)
    except BundleError as e:
        return str(e).split(": ", 1)[-1]
    if not (path / MANIFEST).is_file():
        return f"it has no {MANIFEST}"
    try:
        obj = read_json(path / MANIFEST, MANIFEST, BundleError)
    except BhvitError as e:
        return str(e)
    return _listed(obj, present)


def _archive(path: Path) -> Optional[str]:
    try:
        with tarfile.open(path, "r:") as tar:
            members = []
            for m in tar:
                members.append(m)
                if len(members) > MAX_MEMBERS:
                    return f"it has more than {MAX_MEMBERS} entries"
            if any(not (m.isfile() or m.isdir()) for m in members):
                return "it holds links or special files"
            man = next((m for m in members if m.name == MANIFEST and m.isfile()), None)
            if man is None or man.size > MAX_JSON_BYTES:
                return f"it has no {MANIFEST}"
            f = tar.extractfile(man)
            data = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError):
        return "it is not a bundle archive"
    try:
        obj = parse_json(data, MANIFEST, BundleError)
    except BhvitError as e:
        return str(e)
    return _listed(obj, [m.name for m in members if m.isfile() and m.name != MANIFEST])


def why_not_ours(path: Path, *, archive: bool) -> Optional[str]:
    """None when ``path`` (existing) may be replaced by a new bundle, else the reason it may not."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return "it is a symbolic link"
        if archive:
            return _archive(path) if stat.S_ISREG(mode) else "it is not a regular file"
        return _folder(path) if stat.S_ISDIR(mode) else "it is not a folder"
    except OSError as e:  # an unreadable folder: not known to be ours
        return f"it cannot be read: {e.strerror}"
