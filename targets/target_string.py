"""TVM's classic target strings (``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53"``, ``"cuda -arch=sm_87"``).

TVM 0.27 only accepts dicts and tags ("CLI target string form is no longer supported"), but every TVM
tutorial, forum answer and script of the last years writes targets as strings. We parse the string
form into the dict TVM wants: ``KIND -key=value ...``, list-valued keys (``-mattr=+neon,+dotprod``,
``-libs``, ``-keys``) split on commas, integers as integers, a bare ``-flag`` as ``true``.
"""

from __future__ import annotations

import shlex
from typing import Any

from bhvit_export.errors import TargetError

#: Keys whose value TVM wants as a list.
LIST_KEYS = frozenset({"mattr", "libs", "keys", "cl-opt"})
#: Target kinds a string may start with (what TVM itself registers that we could ever accept).
KINDS = ("llvm", "cuda", "c", "opencl", "vulkan", "metal", "rocm", "nvptx", "hexagon", "webgpu")


def looks_like_target_string(text: str) -> bool:
    """``KIND`` followed by ``-key=value`` options (a bare ``llvm``/``cuda`` counts too)."""
    words = text.split()
    return bool(words) and words[0] in KINDS and all(w.startswith("-") for w in words[1:])


def _value(key: str, raw: str) -> Any:
    if key in LIST_KEYS:
        return [v for v in raw.split(",") if v]
    if raw.lstrip("-").isdigit():
        return int(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw


def parse_target_string(text: str) -> dict[str, Any]:
    """``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53"`` -> ``{"kind": "llvm", "mtriple": ..., "mcpu": ...}``."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise TargetError(f"--target {text!r}: {e}") from None
    if not words or words[0] not in KINDS:
        raise TargetError(f"--target {text!r}: a target string starts with its kind (llvm, cuda)")
    out: dict[str, Any] = {"kind": words[0]}
    for w in words[1:]:
        if not w.startswith("-") or w in ("-", "--"):
            raise TargetError(f"--target {text!r}: expected -key=value options after the kind, got {w!r}")
        key, sep, raw = w.lstrip("-").partition("=")
        out[key] = _value(key, raw) if sep else True
    return out
