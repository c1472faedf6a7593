"""Latency summaries: min / median / p90 of per-run milliseconds (the medians are what we compare)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def summary(ms: Sequence[float]) -> dict[str, Any]:
    """``{"min", "median", "p90", "runs"}`` in milliseconds (empty input gives None values)."""
    if not ms:
        return {"min": None, "median": None, "p90": None, "runs": 0}
    a = np.asarray(ms, dtype=np.float64)
    return {
        "min": round(float(a.min()), 4),
        "median": round(float(np.median(a)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
        "runs": int(a.size),
    }
