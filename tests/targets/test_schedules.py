"""CPU schedule rules (``targets/schedules/cpu``).

* every PrimFunc of the legalised micro fixture gets a rule, and no loop nest of
  ``PARALLEL_MIN_WORK`` iterations or more is left without a parallel loop;
* each rule, applied alone to small random instances of the ops it is meant for, computes the same
  numbers as the unscheduled PrimFunc (float results: to 1e-5 of their scale, reductions may sum
  in another order);
* the end-to-end micro check with these schedules is ``tests/targets/test_import.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402
import tvm_ffi  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tvm import relax, s_tir, tirx  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu  # noqa: E402

from bhvit_export.targets.kernels.target_info import host_target  # noqa: E402
from bhvit_export.targets.schedules.cpu import (  # noqa: E402
    PARALLEL_MIN_WORK,
    Contraction,
    Fallback,
    Injective,
    Reduction,
    is_scheduled,
    schedule_function,
    schedule_module,
)

TARGET = host_target()
SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _legalized(build_body, *shapes) -> list[tirx.PrimFunc]:
    """The fused, legalised PrimFuncs of a one-function Relax module over float32 ``shapes``."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"p{i}", relax.TensorType(list(s), "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(build_body(*params)))
        bb.emit_func_output(out)
    with TARGET:
        mod = tvm.transform.Sequential(cpu.legalize_passes(TARGET))(bb.get())
    return [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


def _run(func: tirx.PrimFunc, seed: int) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    rng = np.random.default_rng(seed)
    args = [
        tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype(str(p.ty.dtype)))
        for p in func.params
    ]
    lib["main"](*args)
    return args[-1].numpy()


def _check_rule(rule, funcs: list[tirx.PrimFunc]) -> None:
    """``rule`` applies to at least one of ``funcs`` and keeps the numbers of each it applies to."""
    applied = 0
    for func in funcs:
        new, name = schedule_function(func, TARGET, [rule])
        if new is None:
            continue
        applied += 1
        want, got = _run(func, 0), _run(new, 0)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    assert applied, f"{type(rule).__name__} applied to none of {len(funcs)} functions"


# --- each rule on small random shapes -----------------------------------------------------------

dims = st.integers(min_value=1, max_value=24)


@SETTINGS
@given(a=dims, b=dims, c=dims, c2=dims)
def test_injective_concat_transpose_elementwise(a: int, b: int, c: int, c2: int) -> None:
    def body(x, y):
        z = relax.op.concat([x, y], axis=-1)
        return relax.op.permute_dims(relax.op.add(relax.op.multiply(z, relax.const(2.0)), relax.const(1.0)), [0, 2, 1])

    _check_rule(Injective(), _legalized(body, (a, b, c), (a, b, c2)))


@SETTINGS
@given(a=dims, b=dims, c=st.integers(2, 40))
def test_injective_slices(a: int, b: int, c: int) -> None:
    def body(x):
        left = relax.op.strided_slice(x, axes=[2], begin=[1], end=[c])
        right = relax.op.strided_slice(x, axes=[2], begin=[0], end=[1])
        return relax.op.nn.prelu(relax.op.concat([left, right], axis=2), relax.const(np.full(a, 0.25, "float32")), axis=0)

    _check_rule(Injective(), _legalized(body, (a, b, c)))


@SETTINGS
@given(b=st.integers(1, 3), m=st.integers(2, 40), k=st.integers(2, 70), n=st.integers(2, 70))
def test_contraction_batch_matmul_with_epilogue(b: int, m: int, k: int, n: int) -> None:
    def body(x, y):
        return relax.op.multiply(relax.op.matmul(x, y), relax.const(0.5))

    _check_rule(Contraction(), _legalized(body, (b, m, k), (b, k, n)))


@SETTINGS
@given(k=st.integers(2, 300), n=st.integers(8, 1100))
def test_contraction_gemv_row_streaming(k: int, n: int) -> None:
    """The classifier at batch 1, ``x[1, K] @ W[K, N] + b``: one spatial iterator, rows of W streamed."""

    def body(x, w, bias):
        return relax.op.add(relax.op.matmul(x, w), bias)

    _check_rule(Contraction(), _legalized(body, (1, k), (k, n), (n,)))


@SETTINGS
@given(m=st.sampled_from([9, 11, 13, 53]), k=st.integers(2, 64), n=st.integers(8, 80), big_w=st.booleans())
def test_contraction_prime_rows_and_large_weights(m: int, k: int, n: int, big_w: bool) -> None:
    """Row counts with no tile divisor (a predicated last row tile) and weights larger than the
    activations (the weight tile loop goes outermost): same numbers as the unscheduled function."""
    k = k * 16 if big_w else k

    def body(x, w):
        return relax.op.matmul(x, w)

    _check_rule(Contraction(), _legalized(body, (m, k), (k, n)))


@SETTINGS
@given(
    groups=st.sampled_from([1, 2, 4]),
    cpg=st.integers(1, 4),
    opg=st.integers(2, 6),
    hw=st.integers(4, 20),
    k=st.integers(1, 4),
    stride=st.integers(1, 4),
    pad=st.integers(0, 2),
    dilation=st.integers(1, 3),
)
def test_contraction_conv2d(groups, cpg, opg, hw, k, stride, pad, dilation) -> None:
    out_w = (hw + 2 * pad - (k - 1) * dilation - 1) // stride + 1
    assume(out_w >= 2)  # a 1-wide output has no vector axis: the rule rightly declines it
    assume(cpg * k * k >= 2)  # a one-term "sum" legalises to an elementwise product
    c, o = groups * cpg, groups * opg

    def body(x, w):
        y = relax.op.nn.conv2d(x, w, strides=stride, padding=pad, dilation=dilation, groups=groups)
        return relax.op.add(y, relax.const(np.linspace(-1, 1, o, dtype="float32").reshape(1, o, 1, 1)))

    _check_rule(Contraction(), _legalized(body, (1, c, hw, hw), (o, cpg, k, k)))


reduction_ops = {
    "softmax": lambda x: relax.op.nn.softmax(x, axis=-1),
    "mean_mid": lambda x: relax.op.mean(x, axis=[1], keepdims=True),
    "sum_last": lambda x: relax.op.sum(x, axis=[2]),
    "max_pool": lambda x: relax.op.nn.max_pool2d(x, pool_size=2, strides=2, padding=1),
    "avg_pool": lambda x: relax.op.nn.adaptive_avg_pool2d(x, output_size=1),
}


@SETTINGS
@given(op=st.sampled_from(sorted(reduction_ops)), a=st.integers(1, 6), h=st.integers(2, 20), w=st.integers(2, 20))
def test_reduction(op: str, a: int, h: int, w: int) -> None:
    assume(not (op == "mean_mid" and a == 1))  # a mean over one element legalises with no reduction left
    _check_rule(Reduction(), _legalized(lambda x: reduction_ops[op](relax.op.reshape(x, (1, a, h, w))), (a, h, w)))


@SETTINGS
@given(op=st.sampled_from(sorted(reduction_ops) + ["conv", "transpose"]), a=st.integers(1, 6), h=st.integers(3, 20))
def test_fallback(op: str, a: int, h: int) -> None:
    if op == "conv":
        funcs = _legalized(lambda x, w: relax.op.nn.conv2d(x, w, padding=1), (1, a, h, h), (3, a, 3, 3))
    elif op == "transpose":
        funcs = _legalized(lambda x: relax.op.permute_dims(relax.op.exp(x), [2, 0, 1]), (a, h, h + 1))
    else:
        funcs = _legalized(lambda x: reduction_ops[op](relax.op.reshape(x, (1, a, h, h))), (a, h, h))
    _check_rule(Fallback(), funcs)


def _loop_kinds(func: tirx.PrimFunc, block: str) -> list[tuple[int, str]]:
    sch = s_tir.Schedule(func)
    return [(int(sch.get(lp).extent), str(sch.get(lp).kind)) for lp in sch.get_loops(sch.get_sblock(block))]


@SETTINGS
@given(rows=st.integers(16, 40), vectors=st.integers(2, 40), seed=st.integers(0, 9))
def test_spatial_rows_keep_their_vectors_serial(rows: int, vectors: int, seed: int) -> None:
    """A row-wise elementwise chain (the token shifts' shape): rows parallel, each row's vectors a
    serial loop of their own (unrolled up to 16), never one flat loop recomputing coordinates."""
    from bhvit_export.targets.schedules.cpu import f32_lanes

    c = f32_lanes(TARGET) * vectors

    def body(x, y):
        return relax.op.add(relax.op.multiply(x, relax.const(np.linspace(0.5, 2, c, dtype="float32"))), y)

    funcs = _legalized(body, (1, rows, c), (1, rows, c))
    _check_rule(Injective(), funcs)
    (func,) = funcs
    new, _ = schedule_function(func, TARGET, [Injective()])
    name = [b for b in _blocks(new)][-1]
    kinds = _loop_kinds(new, name)
    assert kinds[0][0] == rows  # the parallel loop is over rows only
    assert len(kinds) >= 2 and kinds[-1][0] == f32_lanes(TARGET)  # then the row's vectors


@SETTINGS
@given(levels=st.integers(2, 4), h=st.integers(1, 4), n=st.integers(2, 60), seed=st.integers(0, 99))
def test_small_outer_reduction_counts_levels(levels: int, h: int, n: int, seed: int) -> None:
    """The QD context's level count ``sum_t (p >= t_t)`` over a few thresholds per head."""
    thr = np.sort(np.random.default_rng(seed).uniform(0, 1, (levels, 1, h, 1, 1)), axis=0).astype("float32")

    def body(p):
        ge = relax.op.greater_equal(relax.op.expand_dims(p, 0), relax.const(thr))
        return relax.op.sum(relax.op.astype(ge, "float32"), axis=[0])

    _check_rule(Reduction(), _legalized(body, (1, h, n, n)))


# --- the micro fixture: nothing left unscheduled -----------------------------------------------


def _blocks(func: tirx.PrimFunc) -> list[str]:
    names: list[str] = []

    def visit(block) -> None:
        if block.name_hint != "root":
            names.append(block.name_hint)

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit), order="post")
    return names


def unparallel_nests(func: tirx.PrimFunc) -> list[tuple[str, int]]:
    """(block, iterations) of every block under >= PARALLEL_MIN_WORK iterations with no parallel loop."""
    sch = s_tir.Schedule(func)
    bad = []
    for name in _blocks(func):
        loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock(name))]
        work = int(np.prod([int(lp.extent) for lp in loops])) if loops else 1
        if work >= PARALLEL_MIN_WORK and not any(lp.kind == tirx.ForKind.PARALLEL for lp in loops):
            bad.append((name, work))
    return bad


def test_unparallel_nests_sees_a_serial_loop() -> None:
    (func,) = _legalized(lambda x: relax.op.exp(x), (64, 64, 8))
    assert unparallel_nests(func) == [("compute", 64 * 64 * 8)]
    new, _ = schedule_function(func, TARGET, [Injective()])
    assert unparallel_nests(new) == []


@pytest.fixture(scope="module")
def micro_legalized() -> tvm.IRModule:
    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model
    from bhvit_export.targets.importer import import_fused
    from tests.conftest import official_path

    fused = fuse_model(export_reference(load_checkpoint(official_path("micro") / "checkpoint.pth").model))
    with TARGET:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(TARGET) + cpu.legalize_passes(TARGET))(
            import_fused(fused, batch=1)
        )


def test_micro_every_function_scheduled(micro_legalized: tvm.IRModule) -> None:
    with TARGET:
        mod, report = schedule_module(micro_legalized, TARGET)
    assert report, "no unscheduled PrimFunc in the legalised micro model"
    assert [n for n, rule in report.items() if rule == "unscheduled"] == []
    assert {"injective", "contraction"} <= set(report.values())
    for name in report:
        func = mod[name]
        assert is_scheduled(func), name
        assert unparallel_nests(func) == [], name


@SETTINGS
@given(n=st.integers(1, 40), c=st.integers(1, 70))
def test_injective_inlines_prelu_select(n: int, c: int) -> None:
    """A PReLU (a ``Select``, not an ``if_then_else``) is inlined into the add after it: one pass
    over memory, not two; a concat (``if_then_else``) stays its own stage."""

    def body(x, y):
        alpha = relax.const(np.linspace(0.1, 0.9, c, dtype="float32"))
        return relax.op.add(relax.op.nn.prelu(relax.op.add(x, y), alpha, axis=2), relax.const(1.0))

    funcs = _legalized(body, (1, n, c), (1, n, c))
    _check_rule(Injective(), funcs)
    (new, _), = [schedule_function(f, TARGET, [Injective()]) for f in funcs]
    assert len(_blocks(new)) == 1, _blocks(new)

    funcs = _legalized(lambda x, y: relax.op.nn.relu(relax.op.concat([x, y], axis=1)), (1, n, c), (1, n, c))
    (new, _), = [schedule_function(f, TARGET, [Injective()]) for f in funcs]
    assert len(_blocks(new)) == 2, _blocks(new)


def test_a_failing_rule_is_logged_and_raised_in_strict_mode(monkeypatch, caplog) -> None:
    """A rule that raises is never silently "not applicable": a warning naming the rule and the
    function, and in strict mode (the tests) a ScheduleRuleError."""
    from bhvit_export.targets.schedules.cpu.common import SafeRule
    from bhvit_export.targets.schedules.rule_failure import STRICT_ENV, ScheduleRuleError

    class Broken(SafeRule):
        name = "broken"

        def schedule(self, sch, target):
            raise ValueError("tripped over a shape")

    func = tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(0)).with_attr("global_symbol", "fused_add")
    target = host_target()
    with pytest.raises(ScheduleRuleError, match=r"schedule rule broken failed on fused_add \(ValueError: tripped over a shape\)"):
        schedule_function(func, target, [Broken()])
    monkeypatch.setenv(STRICT_ENV, "0")
    with caplog.at_level("WARNING", logger="bhvit.schedules"):
        assert schedule_function(func, target, [Broken()]) == (None, None)
    assert "schedule rule broken failed on fused_add (ValueError: tripped over a shape)" in caplog.text
