"""How much the reference model's own logits move under a tiny input perturbation.

A binary network with random or badly conditioned weights can be numerically chaotic: a 1e-6
relative change of the input flips a sign input that sat within rounding distance of 0, and the
logits move by a visible fraction of their spread. No independent implementation (another
summation order, a popcount kernel) can then match the reference more tightly than the reference
matches itself. ``to-onnx`` measures this on the golden inputs and records it (``bhvit.sensitivity``)
so that ``verify`` can report it, and widen its tolerance -- saying so -- only where the reference
itself cannot hold the spec's.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

METADATA_KEY = "bhvit.sensitivity"
#: Relative input perturbation ``x * (1 + REL * N(0, 1))``, as the official fixtures' study.
REL = 1e-6
DRAWS = 3
SEED = 7


def _rows(y: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: max |y - ref| / std(ref), cosine, same top-1."""
    std = float(ref.std()) or 1.0
    diff = np.abs(y - ref).max(axis=1) / std
    norms = np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(norms > 0, (y * ref).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return diff, cos, y.argmax(axis=1) == ref.argmax(axis=1)


def measure_sensitivity(
    model: Any, x: np.ndarray, *, draws: int = DRAWS, rel: float = REL, seed: int = SEED
) -> dict[str, Any]:
    """Run the (frozen, eval) torch ``model`` on ``x`` and on ``draws`` perturbed copies of it (each
    as one batch, the same computation path) and summarise the worst change of the logits."""
    import torch

    with torch.no_grad():
        ref64 = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy().astype(np.float64)
    per_draw = []
    worst, min_cos, min_top1 = 0.0, 1.0, 1.0
    for d in range(draws):
        noise = np.random.Generator(np.random.PCG64(seed + d)).standard_normal(x.shape)
        xp = (x * (1.0 + rel * noise)).astype(np.float32)
        with torch.no_grad():
            y = model(torch.from_numpy(xp)).numpy()
        diff, cos, same = _rows(y.astype(np.float64), ref64)
        per_draw.append([round(float(v), 6) for v in diff])
        worst = max(worst, float(diff.max()))
        min_cos = min(min_cos, float(cos.min()))
        min_top1 = min(min_top1, float(same.mean()))
    return {
        "how": f"golden inputs * (1 + {rel:g} * N(0,1)), PCG64 seeds {seed}..{seed + draws - 1}, one batch each, "
        "vs the unperturbed batch; max |logit change| / std(logits)",
        "relative_perturbation": rel,
        "draws": draws,
        "images": int(len(x)),
        "worst_max_abs_over_std": worst,
        "min_cosine": min_cos,
        "min_top1_agreement": min_top1,
        "per_draw_max_abs_over_std": per_draw,
    }


def to_metadata(s: dict[str, Any]) -> str:
    return json.dumps(s, sort_keys=True)


def sensitivity_of_model(proto: Any) -> Optional[dict[str, Any]]:
    """The recorded sensitivity of an ONNX ModelProto, or None (older exports, damaged entries)."""
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                s = json.loads(prop.value)
                float(s["worst_max_abs_over_std"]), float(s["min_cosine"]), float(s["min_top1_agreement"])
            except (ValueError, KeyError, TypeError):
                return None
            return s
    return None
