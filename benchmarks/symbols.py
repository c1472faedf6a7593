"""Name the function a counted block belongs to: host address -> mapped file -> ELF address -> symbol.

The plugin reports each block's host address and the qemu process's file mappings; a mapping gives
the file offset, the file's ``PT_LOAD`` segments turn that into the ELF's own address, and its
symbol table (``llvm-nm``, static and dynamic symbols) into a function name.
"""

from __future__ import annotations

import bisect
import shutil
import struct
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .block_counts import Mapping


@lru_cache(maxsize=None)
def _segments(path: str) -> tuple[tuple[int, int, int], ...]:
    """(file offset, virtual address, file size) of each PT_LOAD segment of an ELF64 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return ()
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return ()
    out = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1:
            out.append((off, vaddr, filesz))
    return tuple(out)


@lru_cache(maxsize=None)
def _symbols(path: str) -> tuple[list[int], list[str]]:
    """Sorted function addresses and names (static symbols, else dynamic ones)."""
    nm = shutil.which("llvm-nm") or shutil.which("nm")
    if nm is None:
        return [], []
    table: dict[int, str] = {}
    for extra in (["-D"], []):
        proc = subprocess.run([nm, "--defined-only", *extra, path], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwWiI":
                try:
                    addr = int(parts[0], 16)
                except ValueError:
                    continue
                if addr and (addr not in table or not parts[2].startswith("$")):
                    table[addr] = parts[2]
    addrs = sorted(table)
    return addrs, [table[a] for a in addrs]


def elf_address(m: Mapping, haddr: int) -> Optional[int]:
    """The address inside ``m.path``'s own ELF layout of the host address ``haddr``."""
    off = haddr - m.start + m.offset
    for seg_off, vaddr, size in _segments(m.path):
        if seg_off <= off < seg_off + size:
            return off - seg_off + vaddr
    return None


def function_at(m: Optional[Mapping], haddr: int) -> tuple[str, str]:
    """(file name, function name) of ``haddr``; ``"?"`` where unknown."""
    if m is None:
        return "?", "?"
    lib = Path(m.path).name
    addr = elf_address(m, haddr)
    if addr is None:
        return lib, "?"
    addrs, names = _symbols(m.path)
    i = bisect.bisect_right(addrs, addr) - 1
    return lib, names[i] if i >= 0 else "?"
