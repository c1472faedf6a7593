"""fuse_binary_linear (+ fold_epilogue): rewrite counts, op types, numbers, negative cases."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.passes.graphs import binary_weight, linear_graph
from tests.passes.util import assert_close, fuse, run


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 200), n=st.integers(1, 40), bn=st.booleans(), seed=st.integers(0, 2**31))
def test_binary_linear_equals_reference(k: int, n: int, bn: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = linear_graph(rng, k, n, bn=bn)
    fused, rep, ops = fuse(ref)
    assert rep.counts["binary_linear"] == 1
    assert rep.counts["fold_epilogue"] == (3 if bn else 0)
    assert set(ops) == {"BinaryLinear"}  # the BN folded into the epilogue, nothing else left
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def test_does_not_fuse_when_weight_is_not_binary() -> None:
    rng = np.random.default_rng(0)
    ref = linear_graph(rng, 16, 8, weight=rng.standard_normal((16, 8)).astype(np.float32))
    _, rep, ops = fuse(ref)
    assert rep.counts["binary_linear"] == 0 and "MatMul" in ops and "Sign" in ops


def test_does_not_fuse_when_a_weight_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    w = binary_weight(rng, (8, 16)).T.copy()
    w[3, 2] = 0.0  # sign(R) = 0: one bit cannot encode it
    _, rep, _ = fuse(linear_graph(rng, 16, 8, weight=w))
    assert rep.counts["binary_linear"] == 0
