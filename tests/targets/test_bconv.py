"""Packed ``BinaryConv2d`` kernel (``targets/kernels/bconv.py``) vs numpy, and numpy vs the ONNX body.

The integer kernel output must equal ``reference.binary_conv2d_ref`` exactly on random small
geometries: borders (pads up to 3, including pads larger than the dilation), dilations, strides,
groups, odd sizes, K not a multiple of 64, inputs with 0, -0 and NaN. The reference itself is checked
against onnxruntime running the op's ONNX function body (the executable spec).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.passes.ops import DOMAIN, ONNX_OPSET, function_protos  # noqa: E402
from bhvit_export.targets.kernels import bconv  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.kernels.build import build_kernel  # noqa: E402
from tests.targets.host import HOST, runs_here  # noqa: E402

PROPS = settings(max_examples=15, deadline=None)
host_only = runs_here(HOST)


@st.composite
def geometries(draw: st.DrawFn) -> bconv.ConvGeometry:
    group = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    geom_args = dict(
        batch=draw(st.integers(1, 2)),
        channels=group * draw(st.integers(1, 9)),
        height=draw(st.integers(1, 12)),
        width=draw(st.integers(1, 12)),
        out_channels=group * draw(st.integers(1, 5)),
        kernel=kernel,
        strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        pads=tuple(draw(st.integers(0, 3)) for _ in range(4)),
        dilations=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        group=group,
    )
    try:
        return bconv.ConvGeometry(**geom_args)  # type: ignore[arg-type]
    except ValueError:
        assume(False)  # empty output
        raise


def _data(geom: bconv.ConvGeometry, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x with exact zeros, -0.0 and NaN sprinkled in (all +1), a shift [C], packed weights."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((geom.batch, geom.channels, geom.height, geom.width)).astype(np.float32)
    hit = rng.random(x.shape) < 0.05
    x[hit] = rng.choice(np.array([0.0, -0.0, np.nan], np.float32), size=int(hit.sum()))
    shift = (rng.standard_normal(geom.channels) * 0.3).astype(np.float32)
    shift[rng.random(geom.channels) < 0.2] = 0.0  # keep some exact zeros of x + shift
    w_bits = ref.pack_bits(rng.standard_normal((geom.out_channels, geom.k)))
    return x, shift, w_bits


@functools.lru_cache(maxsize=None)
def _lib(geom: bconv.ConvGeometry, out_dtype: str) -> tvm.runtime.Module:
    return build_kernel(bconv.bconv_module(geom, HOST, out_dtype=out_dtype), HOST)  # type: ignore[arg-type]


def _run(geom: bconv.ConvGeometry, out_dtype: str, *arrays: np.ndarray) -> np.ndarray:
    dev = tvm.cpu()
    dtype = np.int32 if out_dtype == "int32" else np.float32
    out = tvm.runtime.tensor(np.zeros((geom.batch, geom.out_h * geom.out_w, geom.out_channels), dtype), dev)
    _lib(geom, out_dtype)["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays), out)
    nhwc = out.numpy().reshape(geom.batch, geom.out_h, geom.out_w, geom.out_channels)
    return nhwc.transpose(0, 3, 1, 2)  # the kernel writes channels-last


def _ref(geom: bconv.ConvGeometry, x: np.ndarray, shift: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    return ref.binary_conv2d_ref(x, shift, w_bits, geom.kernel, geom.strides, geom.pads, geom.dilations, geom.group)


TINY_D5 = bconv.ConvGeometry(1, 64, 56, 56, 64, (3, 3), (1, 1), (5, 5, 5, 5), (5, 5), 4)


@host_only
@PROPS
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
@example(geom=bconv.ConvGeometry(1, 4, 7, 7, 4, (3, 3), (1, 1), (5, 5, 5, 5), (5, 5), 2), seed=0)  # pads > image
@example(geom=bconv.ConvGeometry(2, 20, 5, 9, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1), seed=1)  # K=180: 3 words
@example(geom=TINY_D5, seed=2)  # a BHViT-Tiny stage-1 conv: K=144, 16-pixel tiles
def test_bconv_int32_bit_exact(geom: bconv.ConvGeometry, seed: int) -> None:
    x, shift, w_bits = _data(geom, seed)
    pat, corr = bconv.border_correction(geom, w_bits)
    got = _run(geom, "int32", x, shift, w_bits, pat, corr)
    np.testing.assert_array_equal(got, _ref(geom, x, shift, w_bits))


@host_only
@settings(max_examples=6, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
def test_bconv_float_epilogue(geom: bconv.ConvGeometry, seed: int) -> None:
    x, shift, w_bits = _data(geom, seed)
    rng = np.random.default_rng(seed + 1)
    scale = rng.uniform(0.01, 2.0, geom.out_channels).astype(np.float32)
    bias = rng.standard_normal(geom.out_channels).astype(np.float32)
    pat, corr = bconv.border_correction(geom, w_bits)
    got = _run(geom, "float32", x, shift, w_bits, pat, corr, scale, bias)
    assert_scaled_conv(got, _ref(geom, x, shift, w_bits), scale, bias)


def assert_scaled_conv(got: np.ndarray, dots: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> None:
    """``got`` (NCHW) is the integer conv ``dots`` times ``scale`` plus ``bias`` per channel, to 1e-6."""
    dots = dots.astype(np.float64)
    s4, b4 = scale.astype(np.float64)[None, :, None, None], bias.astype(np.float64)[None, :, None, None]
    magnitude = np.abs(dots * s4) + np.abs(b4)
    assert np.all(np.abs(got - (dots * s4 + b4)) <= 1e-6 * magnitude + 1e-30)


@settings(max_examples=20, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
def test_border_correction_is_weight_sum_of_padded_taps(geom: bconv.ConvGeometry, seed: int) -> None:
    """Packing padded taps as +1 and subtracting ``corr`` equals zero padding after the sign."""
    _, _, w_bits = _data(geom, seed)
    pat, corr = bconv.border_correction(geom, w_bits)
    assert pat.shape == (geom.out_h * geom.out_w,) and corr.shape[1] == geom.out_channels
    assert np.all(corr[0] == 0)
    kh, kw = geom.kernel
    w = ref.unpack_bits(w_bits, geom.k).reshape(geom.out_channels, geom.cg, kh, kw)
    for s in range(0, len(pat), max(1, len(pat) // 7)):
        oy, ox = divmod(s, geom.out_w)
        iy = oy * geom.strides[0] - geom.pads[0] + np.arange(kh) * geom.dilations[0]
        ix = ox * geom.strides[1] - geom.pads[1] + np.arange(kw) * geom.dilations[1]
        outside = ~(((iy >= 0) & (iy < geom.height))[:, None] & ((ix >= 0) & (ix < geom.width))[None, :])
        np.testing.assert_array_equal(corr[pat[s]], (w * outside).sum(axis=(1, 2, 3)).astype(np.int32))


def _conv_body_model(geom: bconv.ConvGeometry, shift, w_bits, scale, bias) -> onnx.ModelProto:  # noqa: ANN001
    node = helper.make_node(
        "BinaryConv2d", ["x", "shift", "w", "scale", "bias"], ["y"], domain=DOMAIN,
        kernel_shape=list(geom.kernel), strides=list(geom.strides), pads=list(geom.pads),
        dilations=list(geom.dilations), group=geom.group, in_features=geom.k,
    )
    inits = [
        numpy_helper.from_array(shift.reshape(1, -1, 1, 1), "shift"),
        numpy_helper.from_array(w_bits, "w"),
        numpy_helper.from_array(scale, "scale"),
        numpy_helper.from_array(bias, "bias"),
    ]
    x_shape = [geom.batch, geom.channels, geom.height, geom.width]
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_empty_tensor_value_info("y")], initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos({"BinaryConv2d"}),
    )
    model.ir_version = 8
    return model


@settings(max_examples=15, deadline=None)
@given(geom=geometries(), seed=st.integers(0, 2**32 - 1))
def test_reference_matches_onnx_function_body(geom: bconv.ConvGeometry, seed: int) -> None:
    """The numpy reference is the op's spec: with scale 1 and bias 0 the ONNX body gives the same ints."""
    import onnxruntime as ort

    x, shift, w_bits = _data(geom, seed)
    ones, zeros = np.ones(geom.out_channels, np.float32), np.zeros(geom.out_channels, np.float32)
    model = _conv_body_model(geom, shift, w_bits, ones, zeros)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, _ref(geom, x, shift, w_bits).astype(np.float32))
