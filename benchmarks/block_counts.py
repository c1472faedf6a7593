"""How often each basic block of a program runs, counted under qemu-user by our TCG plugin.

The plugin (``targets/native/tb_count.c``) counts executions per translated block and writes, at
exit, each block's address, instruction bytes and count plus the file mappings it saw. This module
builds it (once per source version, with the host C compiler; ``scripts/install-system-deps.sh``
builds the same file), runs a command under qemu with it, and parses the result. Counting one
inference alone is done by difference: the runner runs ``main`` once (``--runs 0``) or twice
(``--runs 1``), and the per-block difference is exactly one steady-state call, without the loading,
the first-call allocations or the output file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from bhvit_export.errors import TargetError
from bhvit_export.targets.runtime_libs import cache_root

SOURCE = Path(__file__).resolve().parent.parent / "targets" / "native" / "tb_count.c"
PLUGIN = "libtb_count.so"
#: qemu's ``-cpu`` per Cortex model: qemu 7.2 has a72 and a76 (v8.2 + dotprod, what A55/A78 run).
QEMU_CPU = {"cortex-a53": "cortex-a53", "cortex-a55": "cortex-a76", "cortex-a72": "cortex-a72",
            "cortex-a76": "cortex-a76", "cortex-a78": "cortex-a76"}


@dataclass(frozen=True)
class Mapping:
    """A file mapping of the qemu process: host addresses [start, end) hold ``path`` from ``offset``."""

    start: int
    end: int
    offset: int
    path: str


@dataclass
class Block:
    """One translated block: where it is, its instructions' bytes, and how often it ran."""

    vaddr: int
    haddr: int
    insns: tuple[bytes, ...]
    count: int

    @property
    def key(self) -> tuple[int, tuple[bytes, ...]]:
        return self.vaddr, self.insns


@dataclass
class Counts:
    blocks: list[Block] = field(default_factory=list)
    maps: list[Mapping] = field(default_factory=list)

    @property
    def instructions(self) -> int:
        """Dynamic instruction count."""
        return sum(len(b.insns) * b.count for b in self.blocks)

    def minus(self, other: "Counts") -> "Counts":
        """Per-block ``self - other`` (blocks matched by address and bytes); drops blocks at <= 0."""
        before = {b.key: b.count for b in other.blocks}
        out = [Block(b.vaddr, b.haddr, b.insns, b.count - before.get(b.key, 0)) for b in self.blocks]
        return Counts([b for b in out if b.count > 0], sorted(set(self.maps) | set(other.maps), key=lambda m: m.start))

    def mapping_of(self, haddr: int) -> Optional[Mapping]:
        for m in self.maps:
            if m.start <= haddr < m.end:
                return m
        return None


def plugin_path() -> Path:
    """Where the plugin for the current source lives (in the cache, stamped with the source hash)."""
    return cache_root() / "native" / PLUGIN


def _stamp() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def build_plugin() -> Path:
    """The plugin, built with the host ``gcc`` (or ``cc``) if missing or older than its source."""
    out = plugin_path()
    stamp = out.with_name(PLUGIN + ".sha256")
    if out.is_file() and stamp.is_file() and stamp.read_text().split()[0] == _stamp():
        return out
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise TargetError("no host C compiler for the qemu plugin: install it with `apt-get install gcc`")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tb_count-") as tmp:
        lib = Path(tmp) / PLUGIN
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", str(SOURCE), "-o", str(lib)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["?"])[0]
            raise TargetError(f"building the qemu plugin failed: {first}")
        os.replace(lib, out)
    stamp.write_text(_stamp() + "\n")
    return out


def qemu_for(arch: str) -> str:
    """``qemu-aarch64`` / ``qemu-x86_64``, or a TargetError naming the package."""
    exe = shutil.which(f"qemu-{arch}")
    if exe is None:
        raise TargetError(f"qemu-{arch} not found: install it with `apt-get install qemu-user`")
    return exe


def parse(text: str) -> Counts:
    """Parse the plugin's output (see ``targets/native/tb_count.c``)."""
    counts = Counts()
    for line in text.splitlines():
        if line.startswith("M "):
            _, start, end, off, path = line.split(" ", 4)
            counts.maps.append(Mapping(int(start, 16), int(end, 16), int(off, 16), path))
        elif line.startswith("B "):
            parts = line.split()
            insns = tuple(bytes.fromhex(h) for h in parts[5].split(":")) if len(parts) > 5 else ()
            counts.blocks.append(Block(int(parts[1], 16), int(parts[2], 16), insns, int(parts[4])))
    return counts


def count(
    command: Sequence[str],
    arch: str,
    *,
    qemu_cpu: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
    sysroot: Optional[str] = "/usr/aarch64-linux-gnu",
    timeout: Optional[float] = None,
    keep: Optional[Path] = None,
) -> Counts:
    """Run ``command`` (a program for ``arch`` and its arguments) under qemu with the plugin.

    ``env`` goes to the guest (qemu's ``-E``), so the x86 qemu itself never sees guest libraries.
    ``keep``: where to store the plugin's output as well (read back instead of running, if present).
    """
    if keep is not None and keep.is_file():
        return parse(keep.read_text())
    plugin = build_plugin()
    qemu = qemu_for(arch)
    with tempfile.TemporaryDirectory(prefix="bhvit-tb-") as tmp:
        out = Path(tmp) / "counts.txt"
        cmd = [qemu]
        if sysroot and arch == "aarch64":
            cmd += ["-L", sysroot]
        if qemu_cpu:
            cmd += ["-cpu", qemu_cpu]
        for k, v in (env or {}).items():
            cmd += ["-E", f"{k}={v}"]
        cmd += ["-plugin", f"{plugin},out={out}", *command]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetError(f"{Path(command[0]).name} under qemu did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise TargetError(f"{Path(command[0]).name} under qemu-{arch} failed: {last}")
        if not out.is_file():
            raise TargetError("the qemu plugin wrote no counts (is this qemu built with plugin support?)")
        text = out.read_text()
        if keep is not None:
            tmp_keep = keep.with_name(f".{keep.name}.{os.getpid()}")
            tmp_keep.write_text(text)
            os.replace(tmp_keep, keep)
        return parse(text)
