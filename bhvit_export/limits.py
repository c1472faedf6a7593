"""Bounds on everything read from a file a user hands us, and the readers that enforce them.

Every input is untrusted (checkpoints, ONNX files, bundles, JSON configs and targets), so no reader
may be made to allocate without bound, recurse without bound or wait forever. The bounds sit far
above anything this tool writes or the official code produces, and each one says why. Reading a
path goes through :func:`regular_file` first: ``/dev/zero`` never ends and opening a FIFO waits for
a writer that may never come, so only regular files are ever opened.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import BhvitError

#: A checkpoint's decompressed size (the sum of its zip members, or the file itself for the legacy
#: pickle format). BHViT-Small is 87 MiB of float32 weights; a training checkpoint with the EMA copy
#: and AdamW's two moments is about 350 MiB. 2 GiB leaves 6x headroom and stops a zip bomb before
#: torch inflates it.
MAX_CHECKPOINT_BYTES = 2 * 2**30
#: Zip members of a checkpoint: one per storage plus a few (Small: ~1,750 tensors, ~7,000 with the
#: optimizer and EMA). A bomb of millions of tiny members costs time and memory in the reader.
MAX_CHECKPOINT_ENTRIES = 100_000
#: JSON files and metadata (bundle manifest, --config, --target FILE, bhvit.config). Ours are a few
#: KB; the official config.json is 1 KB. A bound on size keeps a hostile file from exhausting memory.
MAX_JSON_BYTES = 1 << 20
#: Nesting depth of any JSON we read. Ours nest at most 4 levels; Python's parser recurses per level
#: and a 100,000-deep ``[[[...]]]`` would end in a RecursionError (a traceback).
MAX_JSON_DEPTH = 32
#: Golden inputs (float32 [count, 3, S, S]) that a bhvit.golden entry or a golden file may ask for:
#: the default is 4 images of 224x224 (2.4 MB). 256 MiB is 100x that, and bounds the float64 work
#: buffers the inputs are generated in (2x) as well.
MAX_GOLDEN_BYTES = 256 * 2**20
#: ``verify --runs`` / ``--warmup``: percentiles are stable long before 1,000 runs; 10,000 runs of
#: Tiny take about a minute here, of Small under qemu hours. Beyond it a typo (an extra zero or three)
#: would tie up a device, and TVM allocates the result list up front.
MAX_RUNS = 10_000
#: ``--threads``: TVM's thread pool creates that many OS threads at once; no CPU we target has more.
MAX_THREADS = 1024
#: ``verify --timeout`` default: connecting to an RPC device or tracker, uploading the library and
#: each run. A Raspberry Pi 4 runs Tiny in well under a second; an upload over a slow link takes a
#: few seconds; qemu is ~20x slower than the board. A peer silent for 2 minutes is not coming back.
DEFAULT_TIMEOUT_S = 120.0


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """None for a regular file (symlinks followed), else what it is: 'a folder', 'a FIFO (named pipe)', ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if stat.S_ISREG(mode) else _kind(mode)


def regular_file(path: str | os.PathLike[str], what: str, error: type[BhvitError]) -> Path:
    """``path`` if it is a regular file; else ``error`` saying what it is. Call before opening it."""
    p = Path(path)
    kind = file_kind(p)
    if kind == "missing":
        raise error(f"{what}: no such file: {p}")
    if kind is not None:
        raise error(f"{what}: {p} is {kind}, expected a regular file")
    return p


def read_bytes(path: str | os.PathLike[str], what: str, error: type[BhvitError], limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (never reads more than ``limit + 1``)."""
    p = regular_file(path, what, error)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{what}: cannot read {p}: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{what}: {p} is over {limit // 1024} KiB, more than such a file holds")
    return data


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep value must not recurse here either)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        cur, d = stack.pop()
        if isinstance(cur, (dict, list)):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in (cur.values() if isinstance(cur, dict) else cur))
    return depth


def parse_json(text: str | bytes, what: str, error: type[BhvitError], limit: int = MAX_JSON_BYTES) -> Any:
    """``json.loads`` within the size and depth bounds; every failure is one ``error`` line."""
    if len(text) > limit:
        raise error(f"{what}: {len(text)} bytes of JSON, more than the {limit // 1024} KiB such a file holds")
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise error(f"{what}: not valid JSON ({e})") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise error(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON; Python accepts them unless told not to."""
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: str | os.PathLike[str], what: str, error: type[BhvitError], limit: int = MAX_JSON_BYTES) -> Any:
    """Parse the JSON file at ``path`` (a regular file within the bounds)."""
    return parse_json(read_bytes(path, what, error, limit), what, error, limit)
