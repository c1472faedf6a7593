"""What a bundle folder holds, read without following anything: regular files and folders only.

A bundle comes from elsewhere (scp, a USB stick), so its folder is untrusted like its manifest: a
symbolic link in it could make ``verify`` hash, load or execute a file outside the bundle, and a
FIFO or device would make hashing hang or never end. ``compile`` never writes any of these, so any
of them, listed in the manifest or not, is refused -- as the ``.tar`` form already does when it is
unpacked with tarfile's ``data`` filter.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import BundleError
from ..limits import file_kind


def bundle_files(root: Path, *, skip: str) -> list[str]:
    """Every regular file under ``root`` as sorted POSIX relative paths (but ``skip``).

    Raises BundleError for a symbolic link (to a file or a folder) or a special file anywhere.
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{root}: {rel} is a symbolic link; a bundle holds only regular files and folders")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{root}: {rel} is {file_kind(path)}; a bundle holds only regular files and folders")
            if rel != skip:
                out.append(rel)
    return sorted(out)
