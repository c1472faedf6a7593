"""The packed GSB context kernel (``targets/kernels/gsb_context.py``) vs numpy, numpy vs the ONNX body.

Integer plane products (masks B, U, V of ``p / clip`` times ``sign(v)``) are compared bit-exactly
on random small shapes: token counts across word boundaries, several heads and batches, 0/-0/NaN
in ``v``, probabilities placed exactly on the absolute threshold (``q = 0.5`` must give B = 0) and
rows whose maximum is tied. The aarch64 build is checked to compile (no ARM CPU here to run it).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.passes.ops import DOMAIN, ONNX_OPSET, function_protos  # noqa: E402
from bhvit_export.targets.kernels import gsb_context  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.kernels.build import build_kernel  # noqa: E402
from bhvit_export.targets.kernels.target_info import AARCH64_CORTEX_A72, X86_SAPPHIRERAPIDS, has_vector_popcount, host_target  # noqa: E402

HOST = X86_SAPPHIRERAPIDS
SEED = st.integers(0, 2**32 - 1)
BATCH = st.integers(1, 2)
TOKENS = st.one_of(st.integers(1, 40), st.sampled_from([53, 63, 64, 65]))
HEADS = st.integers(1, 3)
HEAD_DIM = st.one_of(st.integers(1, 24), st.sampled_from([63, 64, 65]))
REL = np.array([0.7, 0.9], np.float32)
host_only = pytest.mark.skipif(not has_vector_popcount(host_target()), reason="host CPU cannot run sapphirerapids code")


def _inputs(rng: np.random.Generator, b: int, n: int, h: int, d: int):
    """p (softmax rows, some exactly at q = 0.5 and some rows with a tied max), v, v_shift, clip."""
    c = h * d
    logits = rng.standard_normal((b, h, n, n)) * 2
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    clip = np.float32(rng.uniform(0.3, 1.5) / n)
    hit = rng.random(p.shape) < 0.05
    p[hit] = np.float32(0.5) * clip  # q = p / clip lands on (or within an ulp of) the 0.5 tie
    if n > 1:
        p[..., 0, 1] = p[..., 0, :].max(-1)  # a tied row maximum
    v = rng.standard_normal((b, n, c)).astype(np.float32)
    v[rng.random(v.shape) < 0.05] = rng.choice(np.array([0.0, -0.0, np.nan], np.float32))
    vs = (rng.standard_normal(c) * 0.3).astype(np.float32)
    return p, v, vs, np.array([clip], np.float32)


@functools.lru_cache(maxsize=None)
def _lib(b: int, n: int, c: int, h: int, out_dtype: str) -> tvm.runtime.Module:
    return build_kernel(gsb_context.gsb_context_module(b, n, c, h, HOST, out_dtype=out_dtype), HOST)  # type: ignore[arg-type]


def _call(lib: tvm.runtime.Module, out: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    dev = tvm.cpu()
    out_t = tvm.runtime.tensor(out, dev)
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays), out_t)
    return out_t.numpy()


@host_only
@settings(max_examples=12, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
@example(b=1, n=53, h=2, d=128, seed=0)  # micro-gsb's first attention stage (14x14: 49 + 4 tokens)
def test_gsb_context_int32_bit_exact(b: int, n: int, h: int, d: int, seed: int) -> None:
    p, v, vs, clip = _inputs(np.random.default_rng(seed), b, n, h, d)
    c = h * d
    got = _call(_lib(b, n, c, h, "int32"), np.zeros((3 * b, n, c), np.int32), p, v, vs, clip, REL)
    np.testing.assert_array_equal(got.reshape(3, b, n, c), ref.gsb_context_ref(p, v, vs, clip[0], REL, h))


@host_only
@settings(max_examples=5, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
def test_gsb_context_float_weights_the_planes(b: int, n: int, h: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p, v, vs, clip = _inputs(rng, b, n, h, d)
    w = rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    got = _call(_lib(b, n, h * d, h, "float32"), np.zeros((b, n, h * d), np.float32), p, v, vs, clip, REL, w)
    planes = ref.gsb_context_ref(p, v, vs, clip[0], REL, h).astype(np.float32)
    want = planes[0] * w[0] + planes[1] * w[1] + planes[2] * w[2]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_gsb_masks_equal_the_official_quantizer() -> None:
    """B = [q > 0.5] is clamp(round(q), 0, 1) with round half to even, ties included."""
    q = np.array([0.0, 0.49999997, 0.5, 0.50000006, 1.0, 1.5, 2.5, 7.0], np.float32)
    official = np.clip(np.round(q), 0, 1)
    np.testing.assert_array_equal(ref.gsb_masks_ref(q, 1.0, REL)[0], official)


def test_gsb_context_compiles_for_aarch64() -> None:
    """Cross-compiles (NEON); the ARM run is the bundle test under qemu."""
    mod = gsb_context.gsb_context_module(1, 53, 256, 2, AARCH64_CORTEX_A72)
    lib = tvm.compile(mod, target=tvm.target.Target(AARCH64_CORTEX_A72))
    assert lib is not None


@settings(max_examples=12, deadline=None)
@given(b=BATCH, n=TOKENS, h=HEADS, d=HEAD_DIM, seed=SEED)
def test_gsb_reference_matches_function_body(b: int, n: int, h: int, d: int, seed: int) -> None:
    import onnxruntime as ort

    p, v, vs, clip = _inputs(np.random.default_rng(seed), b, n, h, d)
    consts = {"vs": vs, "clip": clip, "rel": REL}
    outs = []
    for unit in np.eye(3, dtype=np.float32):  # one plane at a time: integers, compared exactly
        node = helper.make_node("GSBAttentionContext", ["p", "v", "vs", "clip", "rel", "w"], ["y"], domain=DOMAIN, num_heads=h)
        graph = helper.make_graph(
            [node], "t",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(a.shape)) for k, a in (("p", p), ("v", v))],
            [helper.make_empty_tensor_value_info("y")],
            initializer=[numpy_helper.from_array(a, k) for k, a in (consts | {"w": unit}).items()],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
            functions=function_protos({"GSBAttentionContext"}),
        )
        model.ir_version = 8
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"p": p, "v": v})[0])
    np.testing.assert_array_equal(np.stack(outs), ref.gsb_context_ref(p, v, vs, clip[0], REL, h).astype(np.float32))
