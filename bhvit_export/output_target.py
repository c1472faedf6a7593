"""Checks of an output path (``-o``) made before any long step, so that a bad one costs nothing.

``-o`` can name something that must not be replaced (a device file, a FIFO, the input itself, a
folder of the user's), or a place that cannot be written (a path under a file, a read-only folder,
a full disk). Each is refused here with one line naming the path and the OS's reason, before the
checkpoint is loaded or TVM builds for a minute; what can only fail at write time (the disk filling
up meanwhile) is still caught there by the writers.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import BhvitError
from .limits import file_kind

#: Why an existing output may not be replaced (None: it may), e.g. bundle.ownership.why_not_ours.
Replaceable = Callable[[Path], Optional[str]]


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> Optional[str]:
    """The OS's reason ``folder`` cannot take a new entry, or None (access(2) also reports EROFS)."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        ro = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        ro = False
    return os.strerror(errno.EROFS if ro else errno.EACCES)


def free_bytes(folder: Path) -> Optional[int]:
    """Bytes an unprivileged writer may still use on ``folder``'s file system (None if unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_output(
    out: Path,
    *,
    folder: bool,
    error: type[BhvitError],
    inputs: Sequence[Path] = (),
    replaceable: Optional[Replaceable] = None,
    need_bytes: int = 0,
    option: str = "-o",
) -> None:
    """Refuse ``out`` (with ``error``) unless a new file (``folder=False``) or folder can be put there.

    ``inputs``: paths that must not be overwritten; ``replaceable``: when ``out`` exists, whether it
    may be replaced; ``need_bytes``: a lower estimate of the output's size, checked against free space.
    """
    flag = f"{option} {out}"
    for src in inputs:
        if os.path.lexists(out) and src.exists() and os.path.samefile(src, out):
            raise error(f"{flag} is the input {src} itself; refusing to overwrite the input")
    if os.path.lexists(out):
        mode = os.lstat(out).st_mode
        if stat.S_ISLNK(mode):
            raise error(f"{flag} is a symbolic link; give the path of the {'folder' if folder else 'file'} itself")
        kind = "a file" if stat.S_ISREG(mode) else file_kind(out)
        if folder and not stat.S_ISDIR(mode):
            raise error(f"{flag} exists and is {kind}, not a folder; give a folder path (or NAME.tar)")
        if not folder and stat.S_ISDIR(mode):
            raise error(f"{flag} is a folder; give the path of the file to write")
        if not folder and not stat.S_ISREG(mode):
            raise error(f"{flag} is {kind}; give the path of a regular file to write")
        why = replaceable(out) if replaceable is not None else None
        if why is not None:
            raise error(f"{flag} exists and is not a bundle written by bhvit-export ({why}); refusing to replace it")
    where = _nearest_existing(out.parent)
    if not where.is_dir():
        raise error(f"{flag}: {where} is {file_kind(where) or 'a file'}, not a folder, so nothing can be written under it")
    reason = _writable(where)
    if reason is not None:
        raise error(f"{flag}: cannot write in {where}: {reason}")
    free = free_bytes(where)
    if need_bytes and free is not None and free < need_bytes:
        raise error(
            f"{flag}: {os.strerror(errno.ENOSPC).lower()} ({free / 2**20:.1f} MiB free in {where}, "
            f"about {need_bytes / 2**20:.1f} MiB needed)"
        )


def os_reason(e: OSError) -> str:
    """The OS's wording of an error ('No space left on device'), for 'cannot write PATH: REASON'."""
    return e.strerror or (os.strerror(e.errno) if e.errno else str(e))
