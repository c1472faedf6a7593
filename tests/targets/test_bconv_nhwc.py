"""Channels-last packed ``BinaryConv2d`` (``targets/kernels/bconv_nhwc.py``) vs the numpy reference.

The pair (sign-pack of the channels, tap-major im2col + GEMM) must give the exact integer conv of
``reference.binary_conv2d_ref`` on random small geometries whose channels per group divide 64 (1 to
32, the widths where a tap never straddles words): borders, dilations, strides, groups, inputs with
0, -0 and NaN; and its float epilogue the scaled conv.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.targets.kernels import bconv, bconv_nhwc  # noqa: E402
from bhvit_export.targets.kernels.build import build_kernel  # noqa: E402
from tests.targets.host import HOST, runs_here  # noqa: E402
from tests.targets.test_bconv import TINY_D5, _data, _ref, assert_scaled_conv  # noqa: E402

host_only = runs_here(HOST)


@st.composite
def geometries(draw: st.DrawFn) -> bconv.ConvGeometry:
    group = draw(st.integers(1, 3))
    cg = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    try:
        return bconv.ConvGeometry(
            batch=draw(st.integers(1, 2)),
            channels=group * cg,
            height=draw(st.integers(1, 10)),
            width=draw(st.integers(1, 10)),
            out_channels=group * draw(st.integers(1, 5)),
            kernel=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
            strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            pads=tuple(draw(st.integers(0, 3)) for _ in range(4)),  # type: ignore[arg-type]
            dilations=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
            group=group,
        )
    except ValueError:
        assume(False)  # empty output
        raise


@functools.lru_cache(maxsize=None)
def _libs(geom: bconv.ConvGeometry, out_dtype: str) -> tuple[tvm.runtime.Module, tvm.runtime.Module]:
    return (
        build_kernel(bconv_nhwc.sign_pack_module(geom), HOST),
        build_kernel(bconv_nhwc.bconv_module(geom, HOST, out_dtype=out_dtype), HOST),  # type: ignore[arg-type]
    )


def _run(geom: bconv.ConvGeometry, out_dtype: str, x, shift, w_bits, *epilogue) -> np.ndarray:  # noqa: ANN001
    pack, conv = _libs(geom, out_dtype)
    dev = tvm.cpu()
    ph, pw = geom.padded_hw
    pk = tvm.runtime.tensor(np.zeros((geom.batch, geom.group, ph, pw), np.uint64), dev)
    pack["main"](tvm.runtime.tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), dev), tvm.runtime.tensor(shift, dev), pk)
    pat, corr = bconv.border_correction(geom, w_bits)
    dtype = np.int32 if out_dtype == "int32" else np.float32
    out = tvm.runtime.tensor(np.zeros((geom.batch, geom.out_h * geom.out_w, geom.out_channels), dtype), dev)
    args = [bconv_nhwc.tap_major_words(geom, w_bits), pat, corr, *epilogue]
    conv["main"](pk, *(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args), out)
    return out.numpy().reshape(geom.batch, geom.out_h, geom.out_w, geom.out_channels).transpose(0, 3, 1, 2)


@host_only
@settings(max_examples=15, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
@example(geom=TINY_D5, seed=2)  # a BHViT-Tiny stage-1 conv: 16 channels per group, K=144
@example(geom=bconv.ConvGeometry(1, 128, 9, 9, 8, (3, 3), (1, 1), (3, 3, 3, 3), (3, 3), 4), seed=3)  # 32 per group
def test_bconv_nhwc_int32_bit_exact(geom: bconv.ConvGeometry, seed: int) -> None:
    x, shift, w_bits = _data(geom, seed)
    np.testing.assert_array_equal(_run(geom, "int32", x, shift, w_bits), _ref(geom, x, shift, w_bits))


@host_only
@settings(max_examples=5, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
def test_bconv_nhwc_float_epilogue(geom: bconv.ConvGeometry, seed: int) -> None:
    x, shift, w_bits = _data(geom, seed)
    rng = np.random.default_rng(seed + 1)
    scale = rng.uniform(0.01, 2.0, geom.out_channels).astype(np.float32)
    bias = rng.standard_normal(geom.out_channels).astype(np.float32)
    got = _run(geom, "float32", x, shift, w_bits, scale, bias)
    assert_scaled_conv(got, _ref(geom, x, shift, w_bits), scale, bias)


def test_tap_major_words_is_a_bit_permutation() -> None:
    geom = bconv.ConvGeometry(1, 8, 5, 5, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)
    _, _, w_bits = _data(geom, 0)
    tm = bconv_nhwc.tap_major_words(geom, w_bits)
    popcounts = [bin(int(v)).count("1") for v in w_bits.ravel()]
    assert tm.shape == w_bits.shape and sum(bin(int(v)).count("1") for v in tm.ravel()) == sum(popcounts)


def test_unsupported_group_width_is_refused() -> None:
    geom = bconv.ConvGeometry(1, 6, 5, 5, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)  # 3 per group
    assert not bconv_nhwc.supports(geom)
    with pytest.raises(ValueError, match="divid"):
        bconv_nhwc.make_sign_pack(geom)
