"""fuse_gsb_context: the GSB attention quantizer (spec step 6b) and ``Pq @ sign(v)`` fused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bhvit_export.errors import PassError
from tests.passes.graphs import gsb_attention_graph
from tests.passes.util import fuse, run


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 53),
    heads=st.sampled_from([1, 2, 4]),
    d=st.integers(1, 70),
    combine=st.sampled_from(["official", "expanded"]),
    seed=st.integers(0, 2**31),
)
def test_gsb_context_equals_reference(n: int, heads: int, d: int, combine: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # clip around 1/n so that B is populated (q = p / clip > 0.5 for above-average probabilities)
    clip = float(rng.uniform(0.3, 1.5) / n)
    a2, a3 = float(rng.uniform(1.0, 2.0)), float(rng.uniform(2.0, 3.0))
    ref = gsb_attention_graph(rng, n, heads, d, clip, a2, a3, combine=combine)
    fused, rep, ops = fuse(ref)
    assert rep.counts["gsb_context"] == 1 and rep.counts["qd_context"] == 0
    assert ops["GSBAttentionContext"] == 1 and ops["BinaryAttentionScores"] == 1
    assert "MatMul" not in ops and "Round" not in ops and "ReduceMax" not in ops
    feeds = {p: rng.standard_normal((2, n, heads * d)).astype(np.float32) for p in "qkv"}
    got, want = run(fused, feeds), run(ref, feeds)
    scale = max(1.0, float(np.abs(want[0]).max()))
    # The fused op sums w_P * (P @ s) instead of (sum_P w_P P) @ s: the same value up to float rounding.
    assert float(np.abs(got[0] - want[0]).max()) <= 1e-5 * scale


def test_does_not_fuse_when_the_masks_are_multiplied() -> None:
    rng = np.random.default_rng(0)
    ref = gsb_attention_graph(rng, 9, 2, 4, 0.1, 1.5, 2.5, combine="product")
    fused, rep, ops = fuse(ref)
    assert rep.counts["gsb_context"] == 0 and ops["GSBAttentionContext"] == 0
    feeds = {p: rng.standard_normal((2, 9, 8)).astype(np.float32) for p in "qkv"}
    np.testing.assert_allclose(run(fused, feeds)[0], run(ref, feeds)[0], rtol=1e-6, atol=1e-6)


def test_refuses_non_positive_clip() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PassError, match="clip"):
        fuse(gsb_attention_graph(rng, 5, 2, 4, -0.1, 1.5, 2.5))
