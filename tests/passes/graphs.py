"""Tiny reference graphs built in code, shaped like what the torch exporter writes for BHViT."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bhvit_export.passes.ops import ONNX_OPSET

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=10)


def binary_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``s_o * sign(R)`` with a random positive scale per output row (axis 0)."""
    s = rng.uniform(0.1, 2.0, size=(shape[0],) + (1,) * (len(shape) - 1))
    return (s * np.where(rng.standard_normal(shape) < 0, -1.0, 1.0)).astype(np.float32)


def linear_graph(rng: np.random.Generator, k: int, n: int, *, bn: bool = True, weight=None) -> onnx.ModelProto:
    """x[2,3,K] ──Add(shift)──Sign──MatMul(W[K,N])──[Sub(m)──Mul(a)──Add(b)]──> y"""
    w = binary_weight(rng, (n, k)).T if weight is None else weight
    inits = {"shift": rng.standard_normal(k).astype(np.float32) * 0.1, "W": np.ascontiguousarray(w)}
    nodes = [
        helper.make_node("Add", ["x", "shift"], ["xs"]),
        helper.make_node("Sign", ["xs"], ["sx"]),
        helper.make_node("MatMul", ["sx", "W"], ["mm" if bn else "y"]),
    ]
    if bn:
        inits |= {
            "m": rng.standard_normal(n).astype(np.float32),
            "a": rng.uniform(0.5, 2, n).astype(np.float32),
            "b": rng.standard_normal(n).astype(np.float32),
        }
        nodes += [
            helper.make_node("Sub", ["mm", "m"], ["t1"]),
            helper.make_node("Mul", ["t1", "a"], ["t2"]),
            helper.make_node("Add", ["t2", "b"], ["y"]),
        ]
    return _model(nodes, [("x", [2, 3, k])], ["y"], inits)


def conv_graph(
    rng: np.random.Generator, c: int, o: int, group: int, k: int, dil: int, stride: int, pad: int, hw: int
) -> onnx.ModelProto:
    """x[1,C,H,W] ──Add(shift[1,C,1,1])──Sign──Conv(W[O,C/g,k,k], b; zero pads)──> y"""
    inits = {
        "shift": rng.standard_normal((1, c, 1, 1)).astype(np.float32) * 0.1,
        "W": binary_weight(rng, (o, c // group, k, k)),
        "B": rng.standard_normal(o).astype(np.float32),
    }
    nodes = [
        helper.make_node("Add", ["x", "shift"], ["xs"]),
        helper.make_node("Sign", ["xs"], ["sx"]),
        helper.make_node(
            "Conv",
            ["sx", "W", "B"],
            ["y"],
            kernel_shape=[k, k],
            strides=[stride, stride],
            dilations=[dil, dil],
            pads=[pad] * 4,
            group=group,
        ),
    ]
    return _model(nodes, [("x", [1, c, hw, hw])], ["y"], inits)


def attention_graph(
    rng: np.random.Generator, n: int, heads: int, d: int, alpha: np.ndarray, zp: np.ndarray
) -> onnx.ModelProto:
    """Binary attention of one window batch, as BHViT's SelfAttention exports it:

    q,k,v[2,N,C] ──Add(move2)──Sign──Reshape[.,N,h,d]──Transpose──┐
    q.k^T ──Div(sqrt d)──Softmax──Mul(3)──Div(a)──Add(zp)──Round──Clip(0,3)──Mul(a)──MatMul(v)
          ──Transpose──Reshape[.,N,C]──> ctx
    """
    c = heads * d
    inits = {
        f"s{p}": rng.standard_normal(c).astype(np.float32) * 0.1 for p in "qkv"
    } | {
        "hshape": np.array([-1, n, heads, d], dtype=np.int64),
        "oshape": np.array([-1, n, c], dtype=np.int64),
        "sqrtd": np.array(np.sqrt(d), dtype=np.float32),
        "three": np.array(3.0, dtype=np.float32),
        "alpha": alpha.reshape(1, heads, 1, 1).astype(np.float32),
        "zp": zp.reshape(1, heads, 1, 1).astype(np.float32),
        "lo": np.array(0.0, dtype=np.float32),
        "hi": np.array(3.0, dtype=np.float32),
    }
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("Add", [p, f"s{p}"], [f"{p}s"]),
            helper.make_node("Sign", [f"{p}s"], [f"{p}b"]),
            helper.make_node("Reshape", [f"{p}b", "hshape"], [f"{p}4"]),
            helper.make_node("Transpose", [f"{p}4"], [f"{p}h"], perm=perm),
        ]
    nodes += [
        helper.make_node("MatMul", ["qh", "kh"], ["dot"]),
        helper.make_node("Div", ["dot", "sqrtd"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("Mul", ["p", "three"], ["p3"]),
        helper.make_node("Div", ["p3", "alpha"], ["pa"]),
        helper.make_node("Add", ["pa", "zp"], ["pz"]),
        helper.make_node("Round", ["pz"], ["pr"]),
        helper.make_node("Clip", ["pr", "lo", "hi"], ["lv"]),
        helper.make_node("Mul", ["lv", "alpha"], ["pq"]),
        helper.make_node("MatMul", ["pq", "vh"], ["ctx4"]),
        helper.make_node("Transpose", ["ctx4"], ["ctxt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctxt", "oshape"], ["ctx"]),
    ]
    return _model(nodes, [(p, [2, n, c]) for p in "qkv"], ["ctx", "scores"], inits)


def gsb_attention_graph(
    rng: np.random.Generator, n: int, heads: int, d: int, clip: float, a2: float, a3: float, *, combine: str = "official"
) -> onnx.ModelProto:
    """Binary attention with the GSB quantizer (spec step 6b), as the torch exporter writes it:

    q.k^T ──Div(sqrt d)──Softmax──p──Div(clip)──q ─┬─ReduceMax(-1)──Mul(0.7)──Greater(q,.)──Cast──U
                                                   ├────────────────Mul(0.9)──Greater(q,.)──Cast──V
                                                   └─Round──Clip(0,1)──B
    (B - U + (U - V) a2 + V a3) a ──MatMul(v)──Transpose──Reshape[.,N,C]──> ctx

    ``combine="expanded"`` writes the same value as ``B a + U a (a2 - 1) + V a (a3 - a2)`` (another
    association the pass must also read); ``combine="product"`` multiplies U by V (not affine:
    must not fuse).
    """
    c = heads * d
    a = max(clip, 1e-5)
    f = lambda x: np.array(x, dtype=np.float32)  # noqa: E731
    inits = {f"s{p}": rng.standard_normal(c).astype(np.float32) * 0.1 for p in "qkv"} | {
        "hshape": np.array([-1, n, heads, d], dtype=np.int64),
        "oshape": np.array([-1, n, c], dtype=np.int64),
        "sqrtd": f(np.sqrt(d)),
        "clip": f(clip), "a": f(a), "a2": f(a2), "a3": f(a3),
        "r7": f(0.7), "r9": f(0.9), "lo": f(0.0), "hi": f(1.0), "ax": np.array([-1], dtype=np.int64),
        "wb": f(a), "wu": f(a * (a2 - 1)), "wv": f(a * (a3 - a2)),
    }
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("Add", [p, f"s{p}"], [f"{p}s"]),
            helper.make_node("Sign", [f"{p}s"], [f"{p}b"]),
            helper.make_node("Reshape", [f"{p}b", "hshape"], [f"{p}4"]),
            helper.make_node("Transpose", [f"{p}4"], [f"{p}h"], perm=perm),
        ]
    nodes += [
        helper.make_node("MatMul", ["qh", "kh"], ["dot"]),
        helper.make_node("Div", ["dot", "sqrtd"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("Div", ["p", "clip"], ["gq"]),
        helper.make_node("ReduceMax", ["gq", "ax"], ["m"], keepdims=1),
        helper.make_node("Round", ["gq"], ["rq"]),
        helper.make_node("Clip", ["rq", "lo", "hi"], ["B"]),
        helper.make_node("Mul", ["m", "r7"], ["m7"]),
        helper.make_node("Mul", ["m", "r9"], ["m9"]),
        helper.make_node("Greater", ["gq", "m7"], ["gu"]),
        helper.make_node("Greater", ["gq", "m9"], ["gv"]),
        helper.make_node("Cast", ["gu"], ["U"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["gv"], ["V"], to=TensorProto.FLOAT),
    ]
    if combine == "official":
        nodes += [
            helper.make_node("Sub", ["B", "U"], ["t0"]),
            helper.make_node("Sub", ["U", "V"], ["t1"]),
            helper.make_node("Mul", ["t1", "a2"], ["t1a"]),
            helper.make_node("Add", ["t0", "t1a"], ["s01"]),
            helper.make_node("Mul", ["V", "a3"], ["t2a"]),
            helper.make_node("Add", ["s01", "t2a"], ["lv"]),
            helper.make_node("Mul", ["lv", "a"], ["pq"]),
        ]
    elif combine == "expanded":
        nodes += [
            helper.make_node("Mul", ["wb", "B"], ["eb"]),
            helper.make_node("Mul", ["U", "wu"], ["eu"]),
            helper.make_node("Mul", ["V", "wv"], ["ev"]),
            helper.make_node("Add", ["eu", "ev"], ["euv"]),
            helper.make_node("Add", ["eb", "euv"], ["pq"]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["U", "V"], ["uv"]),
            helper.make_node("Add", ["B", "uv"], ["pq"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["pq", "vh"], ["ctx4"]),
        helper.make_node("Transpose", ["ctx4"], ["ctxt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctxt", "oshape"], ["ctx"]),
    ]
    return _model(nodes, [(p, [2, n, c]) for p in "qkv"], ["ctx", "scores"], inits)


def mlp_graph(rng: np.random.Generator, c: int, ratio: int, *, extra_reader: bool = False) -> onnx.ModelProto:
    """BHViT's MLP as the torch exporter writes it (spec "Convolutional block"), x [2, 3, C]::

        h = rprelu(bn(MatMul(Sign(x + s1), W1)) + Concat([x] * ratio))      (C -> I = ratio * C)
        y = bn(MatMul(Sign(h + s2), W2)) + ReduceMean(Reshape(h, [2, 3, C, ratio]), -1)

    ``extra_reader`` adds a third reader of ``h`` (a graph output), which must block the fusion.
    """
    n = c * ratio
    inits = {
        "s1": rng.standard_normal(c).astype(np.float32) * 0.1,
        "W1": np.ascontiguousarray(binary_weight(rng, (n, c)).T),
        "m1": rng.standard_normal(n).astype(np.float32),
        "a1": rng.uniform(0.5, 2, n).astype(np.float32),
        "c1": rng.standard_normal(n).astype(np.float32),
        "b1": rng.standard_normal(n).astype(np.float32) * 0.1,
        "slope": rng.uniform(-0.5, 0.5, n).astype(np.float32),
        "b2": rng.standard_normal(n).astype(np.float32) * 0.1,
        "s2": rng.standard_normal(n).astype(np.float32) * 0.1,
        "W2": np.ascontiguousarray(binary_weight(rng, (c, n)).T),
        "shape": np.array([2, 3, c, ratio], np.int64),
        "axes": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Add", ["x", "s1"], ["xs"]),
        helper.make_node("Sign", ["xs"], ["sx"]),
        helper.make_node("MatMul", ["sx", "W1"], ["mm"]),
        helper.make_node("Sub", ["mm", "m1"], ["t1"]),
        helper.make_node("Mul", ["t1", "a1"], ["t2"]),
        helper.make_node("Add", ["t2", "c1"], ["d"]),
        helper.make_node("Concat", ["x"] * ratio, ["rep"], axis=-1),
        helper.make_node("Add", ["d", "rep"], ["v"]),
        helper.make_node("Sub", ["v", "b1"], ["vs"]),
        helper.make_node("PRelu", ["vs", "slope"], ["pr"]),
        helper.make_node("Add", ["pr", "b2"], ["h"]),
        helper.make_node("Add", ["h", "s2"], ["hs"]),
        helper.make_node("Sign", ["hs"], ["sh"]),
        helper.make_node("MatMul", ["sh", "W2"], ["y2"]),
        helper.make_node("Reshape", ["h", "shape"], ["hr"]),
        helper.make_node("ReduceMean", ["hr", "axes"], ["pool"], keepdims=0),
        helper.make_node("Add", ["y2", "pool"], ["y"]),
    ]
    return _model(nodes, [("x", [2, 3, c])], ["y", "h"] if extra_reader else ["y"], inits)
