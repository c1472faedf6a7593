"""The ``.tar`` form of a bundle: one file to copy to a device.

Packed deterministically (sorted names, zero mtimes/owners) so one bundle folder always gives the
same bytes; unpacked with tarfile's ``data`` filter (no absolute paths, no ``..``, no links out of
the folder, no device files), since a bundle arriving on a device is untrusted.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from ..errors import BundleError

#: A bundle holds a handful of files and a model of at most a few hundred MB; refuse tar bombs.
MAX_MEMBERS = 1000
MAX_UNPACKED_BYTES = 4 * 2**30


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def pack(folder: Path, tar_path: Path) -> None:
    """Write ``folder``'s files into ``tar_path`` (uncompressed; .so files barely compress)."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False, filter=_normalise)


def unpack(tar_path: Path) -> tempfile.TemporaryDirectory:
    """Extract a bundle .tar into a temporary folder (the caller keeps the returned handle alive)."""
    tmp = tempfile.TemporaryDirectory(prefix="bhvit-bundle-")
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            total = sum(m.size for m in members if m.isfile())
            if len(members) > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
                raise BundleError(
                    f"{tar_path}: {len(members)} entries, {total / 2**30:.1f} GiB unpacked: "
                    f"more than a bundle holds (limits {MAX_MEMBERS} entries, {MAX_UNPACKED_BYTES // 2**30} GiB)"
                )
            tar.extractall(tmp.name, members=members, filter="data")
    except BundleError:
        tmp.cleanup()
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        tmp.cleanup()
        raise BundleError(f"{tar_path}: not a readable bundle archive ({e})") from None
    return tmp
