"""The pass criteria of ``verify``: each one a finite number in its range, from the flags or the bundle.

A NaN criterion compares false with everything, so ``cosine < nan`` never fails and a NaN threshold
would pass any model; an infinite or negative ``max |diff|`` bound is no bound. The bundle's own
criteria are as untrusted as the rest of its manifest, and a manifest that omits one must not be
read as "no criterion". So both are checked here and refused (exit 2) before anything runs.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import BundleError

#: criterion -> (command-line flag, lowest, highest)
CRITERIA: dict[str, tuple[str, float, float]] = {
    "min_cosine": ("--min-cosine", -1.0, 1.0),
    "max_abs_over_std": ("--max-abs-over-std", 0.0, math.inf),
    "min_top1_agreement": ("--min-top1", 0.0, 1.0),
}


def _ok(v: Any, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _want(lo: float, hi: float) -> str:
    return f"a number from {lo:g} to {hi:g}" if math.isfinite(hi) else f"a finite number >= {lo:g}"


def check_flags(tol: dict[str, float]) -> None:
    """The criteria given on the command line (only those given)."""
    for key, v in tol.items():
        flag, lo, hi = CRITERIA[key]
        if not _ok(v, lo, hi):
            raise BundleError(f"{flag} {v}: expected {_want(lo, hi)}")


def check_manifest(tol: dict[str, Any]) -> None:
    """The bundle's criteria: all three present, nothing else, each in range."""
    unknown = sorted(set(tol) - set(CRITERIA))
    if unknown:
        raise BundleError(f"manifest.json: unknown tolerance {unknown[0]!r}; it knows {', '.join(CRITERIA)}")
    for key, (_flag, lo, hi) in CRITERIA.items():
        if key not in tol:
            raise BundleError(f"manifest.json: the tolerance {key} is missing")
        if not _ok(tol[key], lo, hi):
            raise BundleError(f"manifest.json: the tolerance {key} is {tol[key]!r}, expected {_want(lo, hi)}")
