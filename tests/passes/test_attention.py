"""fuse_attention_scores and fuse_qd_context on binary window attention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bhvit_export.errors import PassError
from bhvit_export.passes.ops import qd_thresholds
from tests.passes.graphs import attention_graph
from tests.passes.util import assert_close, fuse, run


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 53),
    heads=st.sampled_from([1, 2, 4]),
    d=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
def test_attention_equals_reference(n: int, heads: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.05, 1.0, heads)
    zp = rng.uniform(-0.3, 0.3, heads)
    ref = attention_graph(rng, n, heads, d, alpha, zp)
    fused, rep, ops = fuse(ref)
    assert rep.counts["attention_scores"] == 1 and rep.counts["qd_context"] == 1
    assert ops["BinaryAttentionScores"] == 1 and ops["QDAttentionContext"] == 1
    assert "MatMul" not in ops and "Round" not in ops
    feeds = {p: rng.standard_normal((2, n, heads * d)).astype(np.float32) for p in "qkv"}
    got, want = run(fused, feeds), run(ref, feeds)
    np.testing.assert_array_equal(got[1], want[1])  # scores: integer popcounts / sqrt(d), bit-exact
    assert_close(got[0], want[0])


@settings(max_examples=50, deadline=None)
@given(heads=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_qd_threshold_levels_are_bit_exact(heads: int, seed: int) -> None:
    """sum_j [p >= t_j] equals clamp(round(3p/a + zp), 0, 3), ties at j - 0.5 included."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.05, 1.0, heads).astype(np.float32)
    z = rng.uniform(-0.5, 0.5, heads).astype(np.float32)
    p = rng.uniform(0, 1, (heads, 4000)).astype(np.float32)
    t = qd_thresholds(a, z)
    levels = (p[None] >= t.T[:, :, None]).sum(0)
    want = np.clip(np.round(p * np.float32(3) / a[:, None] + z[:, None]), 0, 3)
    mismatch = levels != want
    # A mismatch may only be a tie: a p within float rounding of a threshold.
    near = np.min(np.abs(p[None] - t.T[:, :, None]), axis=0) <= 4 * np.spacing(p)
    assert not np.any(mismatch & ~near)


def test_refuses_non_positive_alpha() -> None:
    rng = np.random.default_rng(0)
    ref = attention_graph(rng, 5, 2, 4, np.array([0.5, -0.3]), np.zeros(2))
    with pytest.raises(PassError, match="alpha"):
        fuse(ref)
