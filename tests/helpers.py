"""The one way tests compare outputs, as ``shared/spec/bhvit-reference.md`` prescribes.

Two regimes, because ``sign`` is discontinuous: a whole model run by another engine flips the few
sign inputs within rounding distance of 0, so logits are compared *end to end* with a tolerance
relative to their spread; a single module fed the official input (teacher-forced) has nothing to
amplify, so it must match to 1e-5 of its output's scale -- that is where real bugs show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: The official fixtures live beside the repository (``shared/`` is not part of it); override with
#: BHVIT_FIXTURES=/path/to/official.
OFFICIAL = Path(os.environ.get("BHVIT_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))
OFFICIAL_NAMES = ("micro", "micro-binary-embed", "micro-gsb", "micro-ln-nols")
#: (inputs, logits) file pairs a fixture may ship: standard-normal images, and structured ones.
INPUT_SETS = (("inputs.npy", "logits.npy"), ("inputs_structured.npy", "logits_structured.npy"))

#: End-to-end thresholds of the spec; report the numbers, never loosen them to pass.
MIN_COSINE = 0.9995
MAX_DIFF_OF_STD = 0.05


def official_path(name: str) -> Path:
    """The fixture folder, or skip the test saying where it was looked for."""
    path = OFFICIAL / name
    if not (path / "checkpoint.pth").is_file():
        pytest.skip(f"official fixture '{name}' not found at {path} (set BHVIT_FIXTURES to its folder)")
    return path


def input_sets(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, inputs, official logits)`` for every input set the fixture ships."""
    return [
        (x.split(".")[0], np.load(folder / x), np.load(folder / y))
        for x, y in INPUT_SETS
        if (folder / x).is_file() and (folder / y).is_file()
    ]


def official_sensitivity(folder: Path, input_name: str) -> float:
    """The official model's own worst max|logit change| / std under a 1e-6 input perturbation
    (``sensitivity_official*`` of the manifest; 0 where the fixture does not record it)."""
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    key = "sensitivity_official" + ("_structured" if input_name.endswith("structured") else "")
    return float(manifest.get(key, {}).get("worst_maxdiff_over_std", 0.0))


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def compare_end_to_end(got: Any, ref: Any) -> dict[str, float]:
    """Cosine (worst row), max |diff|, max |diff| / std(ref), top-1 agreement, top-5 overlap."""
    g, r = _np(got), _np(ref)
    if g.shape != r.shape:
        raise AssertionError(f"shape {g.shape} != reference shape {r.shape}")
    g2, r2 = g.reshape(len(g), -1) if g.ndim > 1 else g[None], r.reshape(len(r), -1) if r.ndim > 1 else r[None]
    denom = np.linalg.norm(g2, axis=1) * np.linalg.norm(r2, axis=1)
    cos = np.sum(g2 * r2, axis=1) / np.where(denom == 0, 1.0, denom)
    max_abs = float(np.max(np.abs(g2 - r2)))
    std = float(np.std(r2))
    k = min(5, r2.shape[1])
    top_g, top_r = np.argsort(-g2, axis=1)[:, :k], np.argsort(-r2, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_g, top_r)])
    return {
        "cosine": float(np.min(cos)),
        "max_abs": max_abs,
        "rel_std": max_abs / std if std > 0 else float("inf") if max_abs > 0 else 0.0,
        "top1_agree": float(np.mean(top_g[:, 0] == top_r[:, 0])),
        "top5_overlap": float(overlap),
    }


def assert_end_to_end(got: Any, ref: Any, *, what: str = "logits") -> dict[str, float]:
    """Cosine >= 0.9995, max |diff| <= 5% of the reference's std, same top-1 for every row."""
    m = compare_end_to_end(got, ref)
    bad = []
    if not m["cosine"] >= MIN_COSINE:
        bad.append(f"cosine {m['cosine']:.6f} < {MIN_COSINE}")
    if not m["rel_std"] <= MAX_DIFF_OF_STD:
        bad.append(f"max |diff| {m['max_abs']:.4g} is {m['rel_std']:.2%} of the reference std (> {MAX_DIFF_OF_STD:.0%})")
    if m["top1_agree"] != 1.0:
        bad.append(f"top-1 agrees on {m['top1_agree']:.0%} of rows")
    if bad:
        raise AssertionError(f"{what}: " + "; ".join(bad) + f" (all: {m})")
    return m


def assert_module_close(got: Any, ref: Any, tol: float = 1e-5, *, what: str = "output") -> float:
    """Teacher-forced module check: max |diff| <= tol * max(1, max |ref|); returns the max |diff|."""
    g, r = _np(got), _np(ref)
    if g.shape != r.shape:
        raise AssertionError(f"{what}: shape {g.shape} != reference shape {r.shape}")
    diff = np.abs(g - r)
    worst = float(np.max(diff)) if diff.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r))) if r.size else 0.0)
    if not worst <= tol * scale:  # also catches NaN
        idx = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
        n_bad = int(np.sum(~(diff <= tol * scale)))
        raise AssertionError(
            f"{what}: max |diff| {worst:.3g} > {tol:g} * {scale:.3g} at {tuple(int(i) for i in idx)} "
            f"(got {g[idx]:.6g}, ref {r[idx]:.6g}); {n_bad} of {diff.size} elements off"
        )
    return worst


#: The CLI's one-line error: ``error[<stage>]: <message>`` (bhvit_export/cli.py, docs/errors.md).
ERROR_LINE = __import__("re").compile(r"error\[(?P<stage>[a-z-]+)\]: (?P<message>.*)")


def is_error_line(line: str, stage: str | None = None) -> bool:
    """True for ``error[<stage>]: ...`` (of ``stage``, when given)."""
    m = ERROR_LINE.fullmatch(line)
    return m is not None and (stage is None or m["stage"] == stage)
