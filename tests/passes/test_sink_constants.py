"""sink_constants: constant adds sink below variable adds and multiplies and merge; same numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from bhvit_export.passes.sink_constants import sink_constants
from tests.passes.graphs import _model
from tests.passes.util import assert_close, run

#: One step of a random chain: add/sub/mul a constant (per channel or scalar), or add a variable.
STEP = st.sampled_from(["add_c", "sub_c", "mul_c", "add_v", "add_scalar"])


def chain_graph(rng: np.random.Generator, c: int, steps: list[str]) -> onnx.ModelProto:
    """``y = steps(x)`` on x [2, 3, C]; ``add_v`` adds ``relu(x) + k`` (a variable with its own constant)."""
    nodes, inits, cur = [], {}, "x"
    for i, s in enumerate(steps):
        out = f"s{i}"
        if s == "add_v":
            inits[f"k{i}"] = rng.standard_normal(c).astype(np.float32)
            nodes += [helper.make_node("Relu", ["x"], [f"r{i}"]), helper.make_node("Add", [f"r{i}", f"k{i}"], [f"v{i}"]),
                      helper.make_node("Add", [cur, f"v{i}"] if i % 2 else [f"v{i}", cur], [out])]
        else:
            shape = () if s == "add_scalar" else (c,)
            value = rng.uniform(0.5, 1.5, shape) if s == "mul_c" else rng.standard_normal(shape)
            inits[f"c{i}"] = np.asarray(value, np.float32)
            op = {"add_c": "Add", "add_scalar": "Add", "sub_c": "Sub", "mul_c": "Mul"}[s]
            nodes.append(helper.make_node(op, [cur, f"c{i}"], [out]))
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return _model(nodes, [("x", [2, 3, c])], ["y"], inits)


def _sunk(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    graph = gs.import_onnx(model)
    n = sink_constants(graph)
    return gs.export_onnx(graph.cleanup().toposort()), n


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in ("Add", "Sub", "Mul"))


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 16), steps=st.lists(STEP, min_size=1, max_size=7), seed=st.integers(0, 2**31))
def test_same_numbers_never_more_ops(c: int, steps: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = chain_graph(rng, c, steps)
    out, _ = _sunk(ref)
    assert sum(_ops(out).values()) <= sum(_ops(ref).values())
    x = rng.standard_normal((2, 3, c)).astype(np.float32)
    assert_close(run(out, {"x": x})[0], run(ref, {"x": x})[0], tol=1e-5)


def test_gc_sum_keeps_one_constant() -> None:
    """The GC block's ((p1 + m1) + (p2 + m2)) + (p3 + m3), then a BatchNorm: one Mul and one Add left
    after the two variable adds (was 3 + 2 adds, a Sub, a Mul and an Add)."""
    rng = np.random.default_rng(0)
    c = 8
    inits = {f"m{i}": rng.standard_normal(c).astype(np.float32) for i in range(3)}
    inits |= {"mean": rng.standard_normal(c).astype(np.float32), "a": rng.uniform(0.5, 2, c).astype(np.float32),
              "b": rng.standard_normal(c).astype(np.float32)}
    nodes = []
    for i in range(3):
        nodes += [helper.make_node("Relu", ["x"] if i == 0 else [f"q{i - 1}"], [f"p{i}"]),
                  helper.make_node("Add", [f"p{i}", f"m{i}"], [f"q{i}"])]
    nodes += [helper.make_node("Add", ["q0", "q1"], ["s1"]), helper.make_node("Add", ["s1", "q2"], ["s2"]),
              helper.make_node("Sub", ["s2", "mean"], ["n1"]), helper.make_node("Mul", ["n1", "a"], ["n2"]),
              helper.make_node("Add", ["n2", "b"], ["y"])]
    ref = _model(nodes, [("x", [2, 3, c])], ["y"], inits)
    out, n = _sunk(ref)
    assert n > 0
    x = rng.standard_normal((2, 3, c)).astype(np.float32)
    assert_close(run(out, {"x": x})[0], run(ref, {"x": x})[0])
    # q0, q1 still read by p1, p2 (two readers): their adds stay; the sum's constants merge into the BN
    assert _ops(out)["Sub"] == 0 and _ops(out)["Mul"] == 1


def test_graph_outputs_and_shared_tensors_stay() -> None:
    """An intermediate that is a graph output (or read twice) keeps its constant."""
    rng = np.random.default_rng(1)
    inits = {"c0": rng.standard_normal(4).astype(np.float32), "c1": rng.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("Add", ["x", "c0"], ["a"]), helper.make_node("Add", ["a", "c1"], ["y"])]
    ref = _model(nodes, [("x", [2, 3, 4])], ["y", "a"], inits)
    out, n = _sunk(ref)
    assert n == 0 and _ops(out)["Add"] == 2


def test_fused_bytes_do_not_depend_on_earlier_runs() -> None:
    """Names of the new constants come from a counter per run: fusing twice gives the same file."""
    from bhvit_export.passes.pipeline import fuse_model

    ref = chain_graph(np.random.default_rng(3), 8, ["add_c", "add_v", "mul_c", "add_c"])
    first = fuse_model(ref).SerializeToString(deterministic=True)
    assert fuse_model(ref).SerializeToString(deterministic=True) == first
