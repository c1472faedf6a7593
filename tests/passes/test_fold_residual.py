"""fold_residual: constants after a residual add or a conv's token layout fold into the layer's bias."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.passes.graphs import _model, binary_weight, conv_graph, linear_graph
from tests.passes.util import assert_close, fuse, run

#: The ops after the residual add: (op, foldable when it comes right after the residual).
TAILS = {"sub": ("Sub", True), "add": ("Add", True), "mul": ("Mul", False), "prelu": ("PRelu", False)}


def residual_graph(rng: np.random.Generator, c: int, tail: list[str], *, residual: str = "x") -> onnx.ModelProto:
    """``linear_graph`` (C -> C, with BN) ``──Add(residual)──tail...──> y``; ``residual``: ``x`` (the
    input), ``y`` (the layer's own output: must not fold) or ``none``."""
    base = linear_graph(rng, c, c)
    g = base.graph
    nodes, inits = list(g.node), {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    nodes[-1].output[0] = "d"
    cur = "d"
    if residual != "none":
        nodes.append(helper.make_node("Add", ["d", "x" if residual == "x" else "d"], ["r"]))
        cur = "r"
    for i, kind in enumerate(tail):
        name = f"c{i}"
        inits[name] = (rng.uniform(0.5, 1.5, c) if kind == "mul" else rng.standard_normal(c)).astype(np.float32)
        nodes.append(helper.make_node(TAILS[kind][0], [cur, name], [f"tail{i}"]))
        cur = f"tail{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return _model(nodes, [("x", [2, 3, c])], ["y"], inits)


def _expected_folds(tail: list[str], residual: bool) -> int:
    n = 0
    for kind in tail:
        if kind in ("sub", "add") or (kind == "mul" and not residual):
            n += 1
        else:
            break
    return n


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 40), tail=st.lists(st.sampled_from(sorted(TAILS)), min_size=1, max_size=4),
       seed=st.integers(0, 2**31))
def test_constants_after_the_residual_fold(c: int, tail: list[str], seed: int) -> None:
    """Adds/subtracts after the residual add fold into the bias, a multiply or PReLU stops it; the
    fused graph computes the reference's numbers."""
    rng = np.random.default_rng(seed)
    ref = residual_graph(rng, c, tail)
    fused, rep, ops = fuse(ref)
    assert rep.counts["fold_residual"] == _expected_folds(tail, residual=True)
    assert ops["Add"] >= 1 and "BinaryLinear" in ops  # the residual add stays (sink_constants may reshape the rest)
    x = rng.standard_normal((2, 3, c)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def test_self_residual_does_not_fold() -> None:
    """``d + d - m`` is not ``(d - m) + (d - m)``."""
    rng = np.random.default_rng(1)
    ref = residual_graph(rng, 8, ["sub"], residual="y")
    fused, rep, _ = fuse(ref)
    assert rep.counts["fold_residual"] == 0
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def token_conv_graph(rng: np.random.Generator, c: int, hw: int, tail: list[str], *, perm: tuple = (0, 2, 1)) -> onnx.ModelProto:
    """``conv_graph`` (C -> C, 3x3) ``──Reshape([1, C, HW])──Transpose(perm)──tail...──> y`` (BHViT's GC)."""
    base = conv_graph(rng, c, c, 1, 3, 1, 1, 1, hw)
    nodes, inits = list(base.graph.node), {i.name: onnx.numpy_helper.to_array(i) for i in base.graph.initializer}
    nodes[-1].output[0] = "conv"
    inits["shape"] = np.array([1, c, hw * hw], np.int64)
    nodes += [helper.make_node("Reshape", ["conv", "shape"], ["flat"]),
              helper.make_node("Transpose", ["flat"], ["tok"], perm=list(perm))]
    cur = "tok"
    for i, kind in enumerate(tail):
        inits[f"c{i}"] = (rng.uniform(0.5, 1.5, c) if kind == "mul" else rng.standard_normal(c)).astype(np.float32)
        nodes.append(helper.make_node(TAILS[kind][0], [cur, f"c{i}"], [f"tail{i}"]))
        cur = f"tail{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return _model(nodes, [("x", [1, c, hw, hw])], ["y"], inits)


@settings(max_examples=15, deadline=None)
@given(c=st.sampled_from([4, 8, 16]), hw=st.integers(2, 6),
       tail=st.lists(st.sampled_from(sorted(TAILS)), min_size=1, max_size=3), seed=st.integers(0, 2**31))
def test_constants_after_the_token_layout_fold(c: int, hw: int, tail: list[str], seed: int) -> None:
    """Through the conv's NCHW -> tokens layout any per-channel constant folds (no residual yet)."""
    rng = np.random.default_rng(seed)
    ref = token_conv_graph(rng, c, hw, tail)
    fused, rep, _ = fuse(ref)
    assert rep.counts["binary_conv"] == 1
    assert rep.counts["fold_residual"] == _expected_folds(tail, residual=False)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    assert_close(run(fused, {"x": x})[0], run(ref, {"x": x})[0])


def test_other_layouts_do_not_fold() -> None:
    rng = np.random.default_rng(2)
    ref = token_conv_graph(rng, 8, 3, ["sub"], perm=(2, 1, 0))
    assert fuse(ref)[1].counts["fold_residual"] == 0
