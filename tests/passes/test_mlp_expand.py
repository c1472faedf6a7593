"""fuse_mlp_expand: the MLP expansion becomes BinaryExpandPack + PackedBinaryLinear, exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.passes.graphs import mlp_graph
from tests.passes.util import assert_close, fuse, run


@settings(max_examples=20, deadline=None)
@given(c=st.sampled_from([8, 16, 32, 64, 96]), ratio=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**31))
def test_mlp_expand_equals_reference(c: int, ratio: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = mlp_graph(rng, c, ratio)
    fused, rep, ops = fuse(ref)
    whole_words = (c * ratio) % 64 == 0
    assert rep.counts["mlp_expand"] == int(whole_words)
    if whole_words:
        assert ops["BinaryExpandPack"] == ops["PackedBinaryLinear"] == 1
        assert "BinaryLinear" not in ops and "ReduceMean" not in ops and "PRelu" not in ops
    x = rng.standard_normal((2, 3, c)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def test_not_fused_when_the_hidden_layer_has_another_reader() -> None:
    rng = np.random.default_rng(0)
    fused, rep, ops = fuse(mlp_graph(rng, 64, 4, extra_reader=True))
    assert rep.counts["mlp_expand"] == 0 and ops["BinaryLinear"] == 2
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    ref = mlp_graph(np.random.default_rng(0), 64, 4, extra_reader=True)
    for got, want in zip(run(fused, {"x": x}), run(ref, {"x": x})):
        assert_close(got, want)
