"""The float row kernels (``targets/kernels/softmax.py``, ``layer_norm.py``): numbers and machine code.

* its ``fast_exp`` is TOPI's, bit for bit when compiled alike (and the numpy mirror to float rounding);
* on small random shapes and vector widths (rows shorter than, equal to and longer than a vector,
  with and without a tail), the kernel matches its numpy reference to float rounding (sums in
  another order) and float64 softmax within 2e-6 relative;
* on aarch64 its vector loops have no ``fdiv`` (one reciprocal per row) and use NEON ``.4s`` math;
* the layer norm matches its float64 numpy reference to float rounding on small random shapes and
  widths, and sums rows with vector adds on aarch64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402
from tvm import te, topi  # noqa: E402

from bhvit_export.targets.kernels.build import assembly, build_kernel  # noqa: E402
from bhvit_export.targets.kernels.layer_norm import layer_norm_reference, make_layer_norm  # noqa: E402
from bhvit_export.targets.kernels.softmax import fast_exp, fast_exp_reference, make_softmax, softmax_reference  # noqa: E402
from bhvit_export.targets.kernels.target_info import host_target  # noqa: E402

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _softmax(x: np.ndarray, lanes: int) -> np.ndarray:
    lib = build_kernel(make_softmax(x.shape, lanes), host_target())
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    return y.numpy()


def _run_elementwise(x: np.ndarray, fn) -> np.ndarray:  # noqa: ANN001
    t = te.placeholder(x.shape, "float32")
    lib = build_kernel(te.create_prim_func([t, fn(t)]), host_target())
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    return y.numpy()


def test_fast_exp_is_topis_bit_for_bit() -> None:
    """The same expression as ``topi.fast_exp`` (compiled alike: bit-identical), and the numpy
    mirror within float rounding (LLVM may contract its multiply-adds into FMAs)."""
    x = np.concatenate([np.linspace(-100, 100, 4001), np.random.default_rng(0).uniform(-20, 1, 4000)]).astype("float32")
    ours = _run_elementwise(x, lambda t: te.compute(t.shape, lambda i: fast_exp(t[i], 1)))
    np.testing.assert_array_equal(ours, _run_elementwise(x, topi.fast_exp))
    normal = np.abs(ours) > np.finfo(np.float32).tiny
    np.testing.assert_allclose(ours[normal], fast_exp_reference(x)[normal], rtol=5e-6)


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    n=st.integers(1, 70),
    lanes=st.sampled_from([4, 8, 16]),
    scale=st.sampled_from([0.5, 3.0, 20.0]),
    seed=st.integers(0, 99),
)
def test_softmax_matches_reference(lead: list[int], n: int, lanes: int, scale: float, seed: int) -> None:
    x = (scale * np.random.default_rng(seed).standard_normal((*lead, n))).astype("float32")
    got = _softmax(x, lanes)
    np.testing.assert_allclose(got, softmax_reference(x), rtol=2e-6, atol=1e-12)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=2e-6, atol=1e-12)


def test_neon_rows_have_no_divide_per_element() -> None:
    """BHViT-Tiny's attention rows (53 = 13 vectors + 1): one scalar ``fdiv`` per row (two rows
    side by side, and the single-row path where LLVM keeps it), vector exp."""
    asm = assembly(make_softmax((4, 4, 53, 53), 4), A72)
    assert 2 <= asm.count("fdiv") <= 3 and "fdiv\tv" not in asm
    assert "fmla\tv" in asm or "fmul\tv" in asm
    assert "frintm\tv" in asm  # the vector floor of fast_exp's range reduction


@SETTINGS
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    n=st.integers(1, 300),
    lanes=st.sampled_from([4, 8, 16]),
    offset=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 99),
)
def test_layer_norm_matches_reference(lead: list[int], n: int, lanes: int, offset: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal((*lead, n))).astype("float32")
    gamma, beta = rng.standard_normal((2, n)).astype("float32")
    lib = build_kernel(make_layer_norm(x.shape, 1e-5, lanes), host_target())
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, gamma, beta)), y)
    want = layer_norm_reference(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_neon_layer_norm_sums_vectors() -> None:
    """Tiny's attention layer norm (rows of 256): vector adds, one divide pair per row."""
    asm = assembly(make_layer_norm((4, 53, 256), 1e-5, 4), A72)
    assert asm.count("fadd\tv") >= 2 * 64 // 4
    assert "fdiv\tv" not in asm
