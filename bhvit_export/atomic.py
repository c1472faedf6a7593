"""Write outputs under a temporary name and rename them into place.

A later step (compile, verify) trusts whatever file it finds, so a crash or Ctrl-C must never leave a
half-written model or bundle behind: the rename is the commit point.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, deepest first (removed again on failure)."""
    made = []
    p = folder.absolute()
    while not os.path.lexists(p):
        made.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike[str],
    *,
    directory: bool = False,
    may_replace: Optional[Callable[[Path], None]] = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    ``may_replace(final)`` is called right before an existing ``final`` is replaced and raises to
    refuse (it may have changed since it was first checked). Folders created for ``final`` are
    removed again when nothing is written.
    """
    final = Path(final)
    made = _make_parents(final.parent)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            tmp = Path(name)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield tmp
        if may_replace is not None and os.path.lexists(final):
            may_replace(final)
        if directory and final.exists():
            # A folder cannot be renamed over a non-empty one: move the old one aside first, so an
            # interrupt between the two renames leaves the old bundle (aside) rather than nothing.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "bundle")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _remove_empty(made)
        raise
