"""Accuracy of compiled logits against the reference, and the pass decision.

The criteria are the spec's end-to-end tolerance for binary networks (a last-bit difference flips a
few signs, so exact equality is the wrong test): cosine similarity, the largest absolute difference
relative to the reference logits' standard deviation, and top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Accuracy:
    """Comparison of ``got`` with ``ref`` (both ``[N, classes]``)."""

    count: int
    max_abs_err: float
    max_rel_err: float  # max |got - ref| / max |ref|
    max_abs_over_std: float  # max |got - ref| / std(ref)
    cosine: float  # the worst row's cosine similarity
    top1_agreement: float  # fraction of rows with the same argmax
    finite: bool

    def passes(self, tol: dict[str, float]) -> tuple[bool, list[str]]:
        """(passed, the criteria that failed as readable strings)."""
        failed = []
        if not self.finite:
            failed.append("the outputs contain NaN or Inf")
        # written as "not (ok)" so that a NaN metric (or threshold) fails instead of passing
        if not self.cosine >= tol["min_cosine"]:
            failed.append(f"cosine {self.cosine:.6f} < {tol['min_cosine']}")
        if not self.max_abs_over_std <= tol["max_abs_over_std"]:
            failed.append(f"max |diff| {self.max_abs_over_std:.4f} of std > {tol['max_abs_over_std']}")
        if not self.top1_agreement >= tol["min_top1_agreement"]:
            failed.append(f"top-1 agreement {self.top1_agreement:.3f} < {tol['min_top1_agreement']}")
        return not failed, failed

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "max_abs_over_std": self.max_abs_over_std,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "finite": self.finite,
        }


def compare(got: np.ndarray, ref: np.ndarray) -> Accuracy:
    """Accuracy numbers of ``got`` against ``ref``; shapes must match."""
    if got.shape != ref.shape:
        raise ValueError(f"output shape {got.shape} != reference shape {ref.shape}")
    g = got.reshape(len(got), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    finite = bool(np.isfinite(g).all())
    diff = np.abs(np.nan_to_num(g, nan=np.inf) - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) or 1.0
    std = float(r.std()) or 1.0
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.where(norms > 0, (g * r).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.nan_to_num(cos, nan=0.0)
    top1 = float(np.mean(g.argmax(axis=1) == r.argmax(axis=1))) if finite else 0.0
    return Accuracy(
        count=len(g),
        max_abs_err=max_abs,
        max_rel_err=max_abs / scale,
        max_abs_over_std=max_abs / std,
        cosine=float(cos.min()) if cos.size else 0.0,
        top1_agreement=top1,
        finite=finite,
    )
