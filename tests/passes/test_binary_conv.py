"""fuse_binary_conv: grouped, dilated, strided, zero-padded binary convolutions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.passes.graphs import conv_graph
from tests.passes.util import assert_close, fuse, run


@settings(max_examples=25, deadline=None)
@given(
    group=st.sampled_from([1, 2, 4]),
    cpg=st.integers(1, 20),
    opg=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3]),
    dil=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1, 3, 5]),
    seed=st.integers(0, 2**31),
)
def test_binary_conv_equals_reference(group, cpg, opg, k, dil, stride, pad, seed) -> None:
    rng = np.random.default_rng(seed)
    hw = max(dil * (k - 1) + 1 - 2 * pad, 1) + 5
    ref = conv_graph(rng, cpg * group, opg * group, group, k, dil, stride, pad, hw)
    fused, rep, ops = fuse(ref)
    assert rep.counts["binary_conv"] == 1 and set(ops) == {"BinaryConv2d"}
    x = rng.standard_normal((1, cpg * group, hw, hw)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def test_zero_padding_enters_after_the_sign() -> None:
    """All-negative input: inside the image every tap is -1, border taps must count 0, not -1."""
    rng = np.random.default_rng(3)
    ref = conv_graph(rng, 4, 4, 1, 3, 1, 1, 1, 6)
    fused, _, _ = fuse(ref)
    x = -np.ones((1, 4, 6, 6), dtype=np.float32) - 1.0
    got, want = run(fused, {"x": x})[0], run(ref, {"x": x})[0]
    assert_close(got, want)
    assert not np.allclose(want[..., 0, 0], want[..., 2, 2])  # the border really differs
