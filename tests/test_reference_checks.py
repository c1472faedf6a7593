"""verify's honesty about the reference: golden spread warning and sensitivity-based widening."""

from __future__ import annotations

import numpy as np

from bhvit_export.verify.reference_checks import golden_spread, reference_checks

TOL = {"min_cosine": 0.9995, "max_abs_over_std": 0.05, "min_top1_agreement": 1.0}


def _sens(worst: float, cos: float = 1.0, top1: float = 1.0) -> dict:
    return {"worst_max_abs_over_std": worst, "min_cosine": cos, "min_top1_agreement": top1, "draws": 3,
            "relative_perturbation": 1e-6}


def test_constant_logits_have_no_spread_and_warn() -> None:
    ref = np.tile(np.linspace(-3, 3, 10, dtype=np.float32), (4, 1))
    assert golden_spread(ref) == 0.0
    _, lines, info = reference_checks(_sens(0.0), ref, TOL, {})
    assert info["golden_spread_over_std"] == 0.0
    assert any(line.startswith("WARNING: golden spread") for line in lines)


def test_a_stable_reference_changes_nothing() -> None:
    ref = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    tol, lines, info = reference_checks(_sens(0.01), ref, TOL, {})
    assert tol == TOL and info["widened"] == {}
    assert "nothing widened" in lines[-1] and not any("WARNING" in line for line in lines)


def test_a_chaotic_reference_widens_and_says_so() -> None:
    ref = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    tol, lines, info = reference_checks(_sens(0.3, cos=0.999, top1=0.75), ref, TOL, {})
    assert tol["max_abs_over_std"] == 0.6 and abs(tol["min_cosine"] - 0.998) < 1e-12 and tol["min_top1_agreement"] == 0.75
    assert set(info["widened"]) == {"max_abs_over_std", "min_cosine", "min_top1_agreement"}
    assert sum(line.startswith("TOLERANCE WIDENED") for line in lines) == 3


def test_user_tolerances_are_never_widened() -> None:
    ref = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    tol, lines, info = reference_checks(_sens(0.3), ref, TOL, {"max_abs_over_std": 0.05})
    assert tol["max_abs_over_std"] == 0.05 and "max_abs_over_std" not in info["widened"]
    assert any("kept as you set it" in line for line in lines)


def test_missing_sensitivity_is_reported() -> None:
    ref = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    tol, lines, _ = reference_checks(None, ref, TOL, {})
    assert tol == TOL and any("not recorded" in line for line in lines)
