"""Relax rewrites (``targets/relax_passes``) on small random instances of the model's patterns.

Each graph is built the way the ONNX importer writes the model (``image``: permute + reshape,
rolls as slices + concat, ``tokens``: reshape + permute) and compiled twice with TVM's default
CPU pipeline, as is and rewritten: data-movement rewrites must give bit-identical results, the
patch convolution (a matmul now, another summation order) the same to float rounding. Each test
also checks that the rewrite happened (the transposes it exists to remove are gone).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tvm import relax  # noqa: E402

from bhvit_export.targets.kernels.target_info import host_target  # noqa: E402
from bhvit_export.targets.relax_passes import fast_erf, fast_softmax, reciprocal_divide, repeat_concat, roll_concat, row_layer_norm, token_layout  # noqa: E402

TARGET = host_target()
SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _module(build_body, *shapes) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    params = [relax.Var(f"p{i}", relax.TensorType(list(s), "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build_body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod: tvm.IRModule, args: list[np.ndarray]) -> np.ndarray:
    machine = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return machine["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def _count(mod: tvm.IRModule, op: str) -> int:
    return mod["main"].script(show_meta=False).count(f"R.{op}(")


def _check(mod: tvm.IRModule, seed: int, exact: bool = True) -> tvm.IRModule:
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal([int(d) for d in p.ty.shape.values]).astype("float32") for p in mod["main"].params]
    new = token_layout()(mod)
    want, got = _run(mod, args), _run(new, args)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    return new


# --- the model's layout helpers, written as the importer writes them ------------------------------


def image(bb: relax.BlockBuilder, t: relax.Expr, h: int, w: int) -> relax.Expr:
    b, _, c = (int(d) for d in t.ty.shape.values)
    return bb.emit(relax.op.reshape(bb.emit(relax.op.permute_dims(t, [0, 2, 1])), [b, c, h, w]))


def tokens(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    b, c, h, w = (int(d) for d in x.ty.shape.values)
    return bb.emit(relax.op.permute_dims(bb.emit(relax.op.reshape(x, [b, c, h * w])), [0, 2, 1]))


def roll(bb: relax.BlockBuilder, x: relax.Expr, s: int, axis: int) -> relax.Expr:
    n = int(x.ty.shape.values[axis])
    s %= n
    if s == 0:
        return x
    head = bb.emit(relax.op.strided_slice(x, axes=[axis], begin=[n - s], end=[n]))
    tail = bb.emit(relax.op.strided_slice(x, axes=[axis], begin=[0], end=[n - s]))
    return bb.emit(relax.op.concat([head, tail], axis=axis))


def shift(bb: relax.BlockBuilder, x: relax.Expr, axis: int, reach: int) -> relax.Expr:
    acc = x
    for s in range(1, reach + 1):
        acc = bb.emit(relax.op.add(bb.emit(relax.op.add(acc, roll(bb, x, s, axis))), roll(bb, x, -s, axis)))
    return bb.emit(relax.op.divide(acc, relax.const(2.0 * reach + 1.0, "float32")))


def channel_mix(bb: relax.BlockBuilder, x: relax.Expr, s: int) -> relax.Expr:
    c = int(x.ty.shape.values[1]) // 4
    parts = [bb.emit(relax.op.strided_slice(x, axes=[1], begin=[i * c], end=[(i + 1) * c])) for i in range(4)]
    rolled = [roll(bb, parts[0], s, 2), roll(bb, parts[1], -s, 2), roll(bb, parts[2], s, 3), roll(bb, parts[3], -s, 3)]
    return bb.emit(relax.op.concat(rolled, axis=1))


# --- tests -----------------------------------------------------------------------------------------


@SETTINGS
@given(b=st.integers(1, 2), c4=st.integers(1, 5), h=st.integers(3, 9), w=st.integers(3, 9), seed=st.integers(0, 99))
def test_token_shift_runs_channel_last(b: int, c4: int, h: int, w: int, seed: int) -> None:
    """The Block's token shift (h/w shifts of reach 1 and 2, channel mixes, layer scales)."""
    c = 4 * c4

    def body(bb, t, res):
        img = image(bb, t, h, w)
        out = res
        branches = [shift(bb, img, 2, 1), shift(bb, img, 3, 1), channel_mix(bb, img, 1), shift(bb, img, 2, 2), channel_mix(bb, img, 2)]
        for k, br in enumerate(branches):
            scale = relax.const(np.linspace(0.5, 1.5, c, dtype="float32") * (k + 1))
            out = bb.emit(relax.op.add(out, bb.emit(relax.op.multiply(tokens(bb, br), scale))))
        return out

    new = _check(_module(body, (b, h * w, c), (b, h * w, c)), seed)
    assert _count(new, "permute_dims") == 0


@SETTINGS
@given(c=st.integers(1, 6), hw=st.sampled_from([(8, 8), (16, 8), (8, 24)]), o=st.integers(1, 9), seed=st.integers(0, 99))
def test_patch_convs_become_matmuls(c: int, hw: tuple[int, int], o: int, seed: int) -> None:
    """The stem (NCHW input, 4x4/4) and a downsampling conv (image of tokens, 2x2/2) with biases."""
    h, w = hw
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((o, c, 4, 4)).astype("float32")
    w2 = rng.standard_normal((2 * o, o, 2, 2)).astype("float32")
    bias = rng.standard_normal((1, 2 * o, 1, 1)).astype("float32")

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), strides=4))
        t = tokens(bb, y)
        z = bb.emit(relax.op.nn.conv2d(image(bb, t, h // 4, w // 4), relax.const(w2), strides=2))
        return tokens(bb, bb.emit(relax.op.add(z, relax.const(bias))))

    new = _check(_module(body, (1, c, h, w)), seed, exact=False)
    assert _count(new, "nn.conv2d") == 0
    assert _count(new, "matmul") == 2


@SETTINGS
@given(c=st.integers(1, 6), win=st.integers(2, 4), nw=st.integers(1, 3), seed=st.integers(0, 99))
def test_pool_resize_islands(c: int, win: int, nw: int, seed: int) -> None:
    """The GC mixer's global branch: max/avg pooling over windows, nearest upsampling, a blend."""
    n = win * nw

    def body(bb, t):
        img = image(bb, t, n, n)
        mx = bb.emit(relax.op.nn.max_pool2d(img, pool_size=win, strides=win))
        av = bb.emit(relax.op.nn.avg_pool2d(img, pool_size=win, strides=win))
        glob = bb.emit(relax.op.add(mx, av))
        up = bb.emit(relax.op.image.resize2d(glob, (n, n), method="nearest_neighbor", rounding_method="floor"))
        mix = bb.emit(relax.op.add(bb.emit(relax.op.multiply(img, relax.const(0.25, "float32"))), up))
        return tokens(bb, mix)

    new = _check(_module(body, (1, n * n, c)), seed)
    assert _count(new, "permute_dims") == 0


def test_unknown_consumer_keeps_channel_first_value() -> None:
    """A consumer the pass does not understand (here ``sum`` over H) still gets the NCHW value."""

    def body(bb, t):
        img = image(bb, t, 4, 6)
        rolled = roll(bb, img, 1, 3)
        return bb.emit(relax.op.sum(rolled, axis=[2]))

    _check(_module(body, (1, 24, 8)), 0)


@SETTINGS
@given(k=st.integers(2, 8), n=st.integers(1, 40), c=st.integers(1, 70), axis=st.sampled_from([-1, 1]), seed=st.integers(0, 99))
def test_repeat_concat_is_a_broadcast(k: int, n: int, c: int, axis: int, seed: int) -> None:
    """The expansion MLP's residual: ``k`` copies of one tensor concatenated, added to a wide one."""
    wide = (1, n, k * c) if axis == -1 else (1, k * n, c)

    def body(bb, x, y):
        return bb.emit(relax.op.add(y, bb.emit(relax.op.concat([x] * k, axis=axis))))

    mod = _module(body, (1, n, c), wide)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(s).astype("float32") for s in [(1, n, c), wide]]
    new = repeat_concat()(mod)
    np.testing.assert_array_equal(_run(new, args), _run(mod, args))
    assert _count(new, "concat") == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    data=st.data(),
    seed=st.integers(0, 99),
)
def test_roll_concat_is_an_indexed_read(shape: list[int], data, seed: int) -> None:
    """Rolls (two slices + concat, as ``torch.roll`` exports) feeding an add become one fused read."""
    axis = data.draw(st.integers(0, len(shape) - 1))
    shifts = data.draw(st.lists(st.integers(-3, 3), min_size=1, max_size=3))

    def body(bb, x):
        out = x
        for s in shifts:
            out = bb.emit(relax.op.add(out, roll(bb, x, s, axis)))
        return out

    mod = _module(body, tuple(shape))
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    new = roll_concat()(mod)
    got = _run(new, [x])
    np.testing.assert_array_equal(got, _run(mod, [x]))
    ref = x.copy()
    for s in shifts:
        ref = ref + np.roll(x, s, axis)
    np.testing.assert_array_equal(got, ref)
    assert _count(new, "concat") == 0
    assert _count(relax.transform.DeadCodeElimination()(new), "strided_slice") == 0  # the slices are dead
    fuse = tvm.transform.Sequential(
        [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    )
    with TARGET:
        main = fuse(new)["main"].script(show_meta=False)
    assert "call_tir(roll_" not in main.replace("cls.", ""), "a roll was left as its own call (not fused)"


@SETTINGS
@given(n=st.integers(1, 300), scale=st.sampled_from([0.1, 1.0, 3.0, 10.0]), seed=st.integers(0, 99))
def test_fast_erf_matches_erf(n: int, scale: float, seed: int) -> None:
    """``erf`` and the stem's GELU ``x * (erf(x / sqrt 2) + 1)``: erf to 1e-6 absolute (its tail
    clamps to +-1 past |x| = 4, where the exact value is within 2e-8 of it), the GELU to 1e-6 of
    its scale."""

    def body(bb, x):
        e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, relax.const(1.4142135, "float32")))))
        gelu = bb.emit(relax.op.multiply(x, bb.emit(relax.op.add(e, relax.const(1.0, "float32")))))
        return bb.emit(relax.op.concat([e, gelu], axis=0))

    mod = _module(body, (1, n))
    x = (scale * np.random.default_rng(seed).standard_normal((1, n))).astype("float32")
    new = fast_erf()(mod)
    assert _count(new, "erf") == 0 and _count(mod, "erf") == 1
    want, got = _run(mod, [x]), _run(new, [x])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6 * max(1.0, float(np.abs(want[1]).max())))


@SETTINGS
@given(n=st.integers(1, 300), scale=st.sampled_from([0.01, 1.0, 3.0, 10.0]), seed=st.integers(0, 99))
def test_erf_reciprocal_matches_fast_erf(n: int, scale: float, seed: int) -> None:
    """NEON's divide-free erf (Newton reciprocal of Eigen's denominator) against ``topi.fast_erf``:
    within 4e-7 absolute and relative (a few float32 ulp; built for the host, the same arithmetic)."""
    from tvm import te, topi

    from bhvit_export.targets.kernels.build import build_kernel
    from bhvit_export.targets.kernels.erf_reciprocal import fast_erf_reciprocal

    x = (scale * np.random.default_rng(seed).standard_normal(n)).astype("float32")

    def run(fn) -> np.ndarray:  # noqa: ANN001
        t = te.placeholder((n,), "float32")
        out = tvm.runtime.tensor(np.zeros_like(x))
        build_kernel(te.create_prim_func([t, fn(t)]), TARGET)["main"](tvm.runtime.tensor(x), out)
        return out.numpy()

    want, got = run(topi.fast_erf), run(fast_erf_reciprocal)
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=4e-7)


def test_fast_erf_on_neon_has_no_divide() -> None:
    """Built for a Cortex-A72, the pass's erf kernel has no divide; for the host (x86), TOPI's."""

    def body(bb, x):
        return bb.emit(relax.op.erf(x))

    mod = _module(body, (1, 8))
    with tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}):
        neon = fast_erf()(mod)
    host = fast_erf()(mod)
    kernel = lambda m: m["fast_erf"].script(show_meta=False)  # noqa: E731
    assert " / " not in kernel(neon) and "reinterpret" in kernel(neon)
    from bhvit_export.targets.arch import arch_of

    if arch_of(TARGET).name != "neon":  # x86 keeps TOPI's expression
        assert " / " in kernel(host)


@SETTINGS
@given(rows=st.integers(1, 20), n=st.integers(1, 120), scale=st.sampled_from([0.5, 3.0, 20.0]), seed=st.integers(0, 99))
def test_fast_softmax_matches_softmax(rows: int, n: int, scale: float, seed: int) -> None:
    """Attention-shaped softmax over the last axis: within 1e-6 relative of numpy's (float64)."""

    def body(bb, x):
        return bb.emit(relax.op.nn.softmax(x, axis=-1))

    mod = _module(body, (2, rows, n))
    x = (scale * np.random.default_rng(seed).standard_normal((2, rows, n))).astype("float32")
    new = fast_softmax()(mod)
    assert _count(new, "nn.softmax") == 0 and _count(mod, "nn.softmax") == 1
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    want = e / e.sum(-1, keepdims=True)
    # The row kernel is pre-scheduled (no root block): built by our pipeline, as the model is.
    from bhvit_export.targets.build import build

    got = relax.VirtualMachine(build(new, TARGET), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12)


@SETTINGS
@given(rows=st.integers(1, 12), n=st.integers(1, 300), seed=st.integers(0, 99))
def test_row_layer_norm_matches_layer_norm(rows: int, n: int, seed: int) -> None:
    """Last-axis layer norm with gamma and beta (the attention's): the row kernel against Relax's
    own lowering, to float rounding (another summation order)."""
    rng = np.random.default_rng(seed)
    gamma, beta = rng.standard_normal((2, n)).astype("float32")

    def body(bb, x):
        return bb.emit(relax.op.nn.layer_norm(x, relax.const(gamma), relax.const(beta), axes=[-1], epsilon=1e-5))

    mod = _module(body, (2, rows, n))
    x = (1.0 + rng.standard_normal((2, rows, n))).astype("float32")
    new = row_layer_norm()(mod)
    assert _count(new, "nn.layer_norm") == 0 and _count(mod, "nn.layer_norm") == 1
    from bhvit_export.targets.build import build

    got = relax.VirtualMachine(build(new, TARGET), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = _run(mod, [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_row_layer_norm_keeps_other_axes() -> None:
    def body(bb, x):
        g, b = relax.const(np.ones(3, "float32")), relax.const(np.zeros(3, "float32"))
        return bb.emit(relax.op.nn.layer_norm(x, g, b, axes=[1], epsilon=1e-5))

    assert _count(row_layer_norm()(_module(body, (2, 3, 4))), "nn.layer_norm") == 1


@SETTINGS
@given(n=st.integers(1, 40), c=st.integers(1, 9), per_channel=st.booleans(), seed=st.integers(0, 99))
def test_reciprocal_divide_matches_divide(n: int, c: int, per_channel: bool, seed: int) -> None:
    """``x / const`` (the token shifts' counts: 3, 5, ... or per-channel) as ``x * (1/const)``: one more rounding."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.5, 9.0, (c,) if per_channel else ()).astype("float32")

    def body(bb, x):
        return bb.emit(relax.op.divide(x, relax.const(d, "float32")))

    mod = _module(body, (2, n, c))
    x = rng.standard_normal((2, n, c)).astype("float32")
    new = reciprocal_divide()(mod)
    assert _count(new, "divide") == 0 and _count(new, "multiply") == 1
    got = _run(new, [x])
    np.testing.assert_allclose(got, x / d, rtol=2.5e-7, atol=0)
    assert np.array_equal(np.signbit(got), np.signbit(x / d))


def test_reciprocal_divide_does_not_rewrite_zero_or_variable_divisors() -> None:
    def body(bb, x, y):
        z = bb.emit(relax.op.divide(x, relax.const(np.array([1.0, 0.0], "float32"))))
        return bb.emit(relax.op.divide(z, y))

    mod = _module(body, (3, 2), (3, 2))
    assert _count(reciprocal_divide()(mod), "divide") == 2


def test_lower_rank_twin_is_not_broadcast_channel_last() -> None:
    """``image + tokens^T``: the 3-D operand broadcasts against (C, H, W) from the right, which
    the channel-last twins do not reproduce, so that add must keep its channel-first form."""
    c = h = 4

    def body(bb, t, t2):
        img = image(bb, t2, h, 5)
        v3 = bb.emit(relax.op.permute_dims(t, [0, 2, 1]))  # (1, C, W): broadcasts as (_, _, H=C, W)
        return tokens(bb, bb.emit(relax.op.add(img, v3)))

    _check(_module(body, (1, 5, c), (1, h * 5, c)), 0)
