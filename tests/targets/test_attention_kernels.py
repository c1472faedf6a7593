"""Packed attention kernels (``targets/kernels/attention.py``) vs numpy, and numpy vs the ONNX bodies.

Integer variants are compared bit-exactly on random small shapes: head dims and token counts
across word boundaries (63/64/65, 128+), several heads and batches, 0/-0/NaN inputs; for the QD
context, probabilities sitting exactly on a threshold (``>=`` must count them) and *unordered*
thresholds (the two-bit-plane identity must not assume ``t1 <= t2 <= t3``). The references are
checked against onnxruntime running the function bodies.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.passes.ops import DOMAIN, ONNX_OPSET, function_protos, qd_thresholds  # noqa: E402
from bhvit_export.targets.kernels import attention  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.cpu_features import target_features  # noqa: E402
from bhvit_export.targets.kernels.build import assembly, build_kernel  # noqa: E402
from bhvit_export.targets.kernels.target_info import X86_SAPPHIRERAPIDS  # noqa: E402
from tests.targets.host import HOST, runs_here  # noqa: E402

PROPS = settings(max_examples=15, deadline=None)
SEED = st.integers(0, 2**32 - 1)
BATCH = st.integers(1, 2)
TOKENS = st.one_of(st.integers(1, 40), st.sampled_from([63, 64, 65, 130]))
HEADS = st.integers(1, 3)
HEAD_DIM = st.one_of(st.integers(1, 40), st.sampled_from([63, 64, 65, 130]))
host_only = runs_here(HOST)


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    hit = rng.random(shape) < 0.05
    x[hit] = rng.choice(np.array([0.0, -0.0, np.nan], np.float32), size=int(hit.sum()))
    return x


def _shift(rng: np.random.Generator, c: int) -> np.ndarray:
    s = (rng.standard_normal(c) * 0.3).astype(np.float32)
    s[rng.random(c) < 0.2] = 0.0
    return s


def _probs(rng: np.random.Generator, b: int, h: int, n: int) -> np.ndarray:
    logits = rng.standard_normal((b, h, n, n)) * 2
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


def _qd_inputs(rng: np.random.Generator, b: int, n: int, h: int, d: int, ordered: bool):
    """p, v, v_shift, thresholds, alpha; some p exactly on a threshold."""
    c = h * d
    p = _probs(rng, b, h, n)
    alpha = (rng.random(h) * 3.0 / max(n, 1) + 0.01).astype(np.float32)
    if ordered:
        t = qd_thresholds(alpha, (rng.random(h) * 0.4 - 0.2).astype(np.float32))
    else:
        t = (rng.random((h, 3)) * 2.0 / max(n, 1)).astype(np.float32)
    hit = rng.random(p.shape) < 0.1
    p[hit] = t[np.broadcast_to(np.arange(h)[None, :, None, None], p.shape)[hit], rng.integers(0, 3, int(hit.sum()))]
    return p, _signs(rng, (b, n, c)), _shift(rng, c), t, alpha


@functools.lru_cache(maxsize=None)
def _scores_lib(b: int, n: int, c: int, h: int, scale: float, out_dtype: str) -> tvm.runtime.Module:
    return build_kernel(attention.scores_module(b, n, c, h, scale, HOST, out_dtype=out_dtype), HOST)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def _ctx_lib(b: int, n: int, c: int, h: int, out_dtype: str) -> tvm.runtime.Module:
    return build_kernel(attention.qd_context_module(b, n, c, h, HOST, out_dtype=out_dtype), HOST)  # type: ignore[arg-type]


def _call(lib: tvm.runtime.Module, out: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    dev = tvm.cpu()
    out_t = tvm.runtime.tensor(out, dev)
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays), out_t)
    return out_t.numpy()


# --- kernels vs numpy ---------------------------------------------------------------------------


@host_only
@PROPS
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
@example(b=1, n=196, h=4, d=64, seed=0)  # BHViT-Tiny attention
def test_scores_int32_bit_exact(b: int, n: int, h: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = h * d
    q, k, qs, ks = _signs(rng, (b, n, c)), _signs(rng, (b, n, c)), _shift(rng, c), _shift(rng, c)
    got = _call(_scores_lib(b, n, c, h, 1.0, "int32"), np.zeros((b * h, n, n), np.int32), q, k, qs, ks)
    np.testing.assert_array_equal(got.reshape(b, h, n, n), ref.attention_scores_ref(q, k, qs, ks, h))


@host_only
@settings(max_examples=6, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
def test_scores_float_divides_by_scale(b: int, n: int, h: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = h * d
    q, k, qs, ks = _signs(rng, (b, n, c)), _signs(rng, (b, n, c)), _shift(rng, c), _shift(rng, c)
    scale = float(np.float32(np.sqrt(d)))
    got = _call(_scores_lib(b, n, c, h, scale, "float32"), np.zeros((b * h, n, n), np.float32), q, k, qs, ks)
    want = ref.attention_scores_ref(q, k, qs, ks, h).astype(np.float32) / np.float32(scale)
    np.testing.assert_allclose(got.reshape(b, h, n, n), want, rtol=1e-6, atol=0)


@host_only
@PROPS
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, ordered=st.booleans(), seed=SEED)
@example(b=1, n=196, h=4, d=64, ordered=True, seed=0)  # BHViT-Tiny attention
@example(b=1, n=65, h=2, d=3, ordered=False, seed=1)  # one valid bit in the last word of a row
def test_qd_context_int32_bit_exact(b: int, n: int, h: int, d: int, ordered: bool, seed: int) -> None:
    p, v, vs, t, _ = _qd_inputs(np.random.default_rng(seed), b, n, h, d, ordered)
    c = h * d
    got = _call(_ctx_lib(b, n, c, h, "int32"), np.zeros((b, n, c), np.int32), p, v, vs, t)
    np.testing.assert_array_equal(got, ref.qd_context_ref(p, v, vs, t, h))


@host_only
@settings(max_examples=6, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
def test_qd_context_float_scales_by_alpha(b: int, n: int, h: int, d: int, seed: int) -> None:
    p, v, vs, t, alpha = _qd_inputs(np.random.default_rng(seed), b, n, h, d, True)
    c = h * d
    got = _call(_ctx_lib(b, n, c, h, "float32"), np.zeros((b, n, c), np.float32), p, v, vs, t, alpha)
    want = ref.qd_context_ref(p, v, vs, t, h).astype(np.float32) * np.repeat(alpha, d)[None, None, :]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


# --- machine code for another CPU (build-only: compiled and disassembled, never run) -------------


def test_znver4_context_uses_sse4a_which_intel_lacks() -> None:
    """Why a bundle records every extension of its mcpu, not just the popcount: LLVM's znver4 code
    for the QD context uses SSE4A (``insertq``/``extrq``), AMD-only, so it cannot run on an Intel
    CPU that has all of Zen 4's AVX-512; the feature list names it and ``verify`` refuses."""
    znver4 = {"kind": "llvm", "mcpu": "znver4"}
    asm = assembly(attention.qd_context_module(1, 40, 40, 1, znver4, out_dtype="int32"), znver4)  # type: ignore[arg-type]
    assert re.search(r"^\s+(insertq|extrq)\s", asm, re.MULTILINE)
    assert "sse4a" in target_features(znver4) and "sse4a" not in target_features(X86_SAPPHIRERAPIDS)


# --- numpy references vs the ONNX function bodies -----------------------------------------------


def _body_model(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:  # noqa: ANN003
    names = list(inputs) + list(consts)
    node = helper.make_node(op, names, ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(a.shape)) for k, a in inputs.items()],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[numpy_helper.from_array(a, k) for k, a in consts.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos({op}),
    )
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@settings(max_examples=15, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
def test_scores_reference_matches_function_body(b: int, n: int, h: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = h * d
    q, k = _signs(rng, (b, n, c)), _signs(rng, (b, n, c))
    model = _body_model("BinaryAttentionScores", {"q": q, "k": k}, {"qs": _shift(rng, c), "ks": _shift(rng, c)},
                        num_heads=h, scale=1.0)
    got = _ort(model, {"q": q, "k": k})
    want = ref.attention_scores_ref(q, k, numpy_helper.to_array(model.graph.initializer[0]),
                                    numpy_helper.to_array(model.graph.initializer[1]), h)
    np.testing.assert_array_equal(got, want.astype(np.float32))


@settings(max_examples=15, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, ordered=st.booleans(), seed=SEED)
def test_qd_context_reference_matches_function_body(b: int, n: int, h: int, d: int, ordered: bool, seed: int) -> None:
    p, v, vs, t, _ = _qd_inputs(np.random.default_rng(seed), b, n, h, d, ordered)
    model = _body_model("QDAttentionContext", {"p": p, "v": v},
                        {"vs": vs, "t": t, "alpha": np.ones(h, np.float32)}, num_heads=h)
    got = _ort(model, {"p": p, "v": v})
    np.testing.assert_array_equal(got, ref.qd_context_ref(p, v, vs, t, h).astype(np.float32))
