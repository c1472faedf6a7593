"""The accuracy numbers and pass criteria of ``verify`` (``bhvit_export/verify/metrics.py``)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bhvit_export.bundle.manifest import DEFAULT_TOLERANCES
from bhvit_export.verify.latency import summary
from bhvit_export.verify.metrics import compare


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(2, 50), seed=st.integers(0, 2**31 - 1))
def test_identical_passes_and_scaled_noise_is_measured(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, c)).astype(np.float32) * 10
    acc = compare(ref.copy(), ref)
    assert acc.max_abs_err == 0 and acc.top1_agreement == 1.0 and acc.cosine > 0.999999
    assert acc.passes(DEFAULT_TOLERANCES)[0]
    noisy = ref + np.float32(0.2) * ref.std() * rng.standard_normal(ref.shape).astype(np.float32)
    noisy[0, 0] = ref[0, 0] + np.float32(0.2) * ref.std()  # at least one error of 20% of std (c=2 can draw less)
    got = compare(noisy, ref)
    assert np.isclose(got.max_abs_err, np.abs(noisy - ref).max(), rtol=1e-5)
    assert got.max_abs_over_std > DEFAULT_TOLERANCES["max_abs_over_std"]
    assert not got.passes(DEFAULT_TOLERANCES)[0]


def test_nan_fails_and_top1_counts() -> None:
    ref = np.array([[1.0, 2.0], [3.0, 1.0]], dtype=np.float32)
    bad = ref.copy()
    bad[0, 0] = np.nan
    ok, why = compare(bad, ref).passes(DEFAULT_TOLERANCES)
    assert not ok and any("NaN" in w for w in why)
    swapped = ref[:, ::-1].copy()
    assert compare(swapped, ref).top1_agreement == 0.0


def test_latency_summary() -> None:
    s = summary([3.0, 1.0, 2.0, 10.0])
    assert s["min"] == 1.0 and s["median"] == 2.5 and s["runs"] == 4 and s["p90"] > 3.0
    assert summary([])["median"] is None
