"""Fused ONNX -> Relax import and host build (``targets/importer.py``, ``converters.py``, ``build.py``).

* each ``bhvit`` op alone, on a tiny graph, against onnxruntime running the op's ONNX function
  body (the executable spec): teacher-forced, so it must match to float rounding;
* the official micro fixture, fused, compiled for the host and run image by image at batch 1,
  against the official logits with the end-to-end tolerances of ``tests/helpers.py``;
* unsupported ops (unknown names, foreign domains, our names outside ``bhvit``) are all named in
  one ``TargetError``.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.passes.ops import DOMAIN, ONNX_OPSET, function_protos, pack_bits, qd_thresholds  # noqa: E402
from bhvit_export.targets.build import build, run, vm  # noqa: E402
from bhvit_export.targets.importer import bhvit_converters, import_fused, unsupported_ops  # noqa: E402
from tests.targets.host import runs_here  # noqa: E402
from tests.helpers import assert_end_to_end  # noqa: E402

host_only = runs_here()  # build() defaults to the host target
#: The packed QD context kernel, opt-in on CPUs (``targets/lowering.py``: float measured faster there).
_QD_PACKED = {"QDAttentionContext": ("qd_context",)}


def _model(nodes, inputs, outputs, inits, used) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(used),
    )
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _c(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def _single_op_model(op: str, rng: np.random.Generator):
    """(model, input array): one bhvit op fed from the graph input, random constant operands."""
    f32 = np.float32
    if op == "BinaryLinear":
        n_tok, k, n = 7, 100, 24  # K not a multiple of 64: padding bits
        shape = ["batch", n_tok, k]
        x = rng.standard_normal((1, n_tok, k)).astype(f32)
        inits = [
            _c("shift", rng.standard_normal(k).astype(f32) * 0.3),
            _c("w", pack_bits(rng.standard_normal((n, k)))),
            _c("scale", rng.random(n).astype(f32) + 0.5),
            _c("bias", rng.standard_normal(n).astype(f32)),
        ]
        node = helper.make_node(op, ["x", "shift", "w", "scale", "bias"], ["y"], domain=DOMAIN, in_features=k)
        out = _vi("y", ["batch", n_tok, n])
    elif op == "BinaryConv2d":
        c, o, g, hw = 6, 8, 2, 9
        kk = (c // g) * 9
        shape = ["batch", c, hw, hw]
        x = rng.standard_normal((1, c, hw, hw)).astype(f32)
        inits = [
            _c("shift", rng.standard_normal((1, c, 1, 1)).astype(f32) * 0.3),
            _c("w", pack_bits(rng.standard_normal((o, kk)))),
            _c("scale", rng.random(o).astype(f32) + 0.5),
            _c("bias", rng.standard_normal(o).astype(f32)),
        ]
        node = helper.make_node(
            op, ["x", "shift", "w", "scale", "bias"], ["y"], domain=DOMAIN,
            kernel_shape=[3, 3], strides=[2, 2], pads=[2, 1, 2, 1], dilations=[2, 1], group=g, in_features=kk,
        )
        out = _vi("y", None)
    elif op == "BinaryAttentionScores":
        n_tok, c, h = 10, 48, 3
        shape = ["batch", n_tok, c]
        x = rng.standard_normal((1, n_tok, c)).astype(f32)
        inits = [
            _c("kin", rng.standard_normal((1, n_tok, c)).astype(f32)),
            _c("qs", rng.standard_normal(c).astype(f32) * 0.3),
            _c("ks", rng.standard_normal(c).astype(f32) * 0.3),
        ]
        node = helper.make_node(op, ["x", "kin", "qs", "ks"], ["y"], domain=DOMAIN, num_heads=h, scale=4.0)
        out = _vi("y", ["batch", h, n_tok, n_tok])
    elif op == "GSBAttentionContext":
        n_tok, c, h = 10, 48, 3
        shape = ["batch", h, n_tok, n_tok]
        logits = rng.standard_normal((1, h, n_tok, n_tok)) * 2
        x = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(f32)
        inits = [
            _c("v", rng.standard_normal((1, n_tok, c)).astype(f32)),
            _c("vs", rng.standard_normal(c).astype(f32) * 0.3),
            _c("clip", np.array([0.08], f32)),
            _c("rel", np.array([0.7, 0.9], f32)),
            _c("w", np.array([0.08, 0.05, 0.07], f32)),
        ]
        node = helper.make_node(op, ["x", "v", "vs", "clip", "rel", "w"], ["y"], domain=DOMAIN, num_heads=h)
        out = _vi("y", ["batch", n_tok, c])
    else:  # QDAttentionContext
        n_tok, c, h = 10, 48, 3
        shape = ["batch", h, n_tok, n_tok]
        logits = rng.standard_normal((1, h, n_tok, n_tok)) * 2
        x = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(f32)
        alpha = (rng.random(h) * 0.5 + 0.2).astype(f32)
        inits = [
            _c("v", rng.standard_normal((1, n_tok, c)).astype(f32)),
            _c("vs", rng.standard_normal(c).astype(f32) * 0.3),
            _c("t", qd_thresholds(alpha, np.zeros(h, f32))),
            _c("alpha", alpha),
        ]
        node = helper.make_node(op, ["x", "v", "vs", "t", "alpha"], ["y"], domain=DOMAIN, num_heads=h)
        out = _vi("y", ["batch", n_tok, c])
    if out.type.tensor_type.elem_type == 0:
        out = helper.make_empty_tensor_value_info("y")
    return _model([node], [_vi("x", shape)], [out], inits, {op}), x


@host_only
@pytest.mark.parametrize(
    ("op", "packed"),
    [
        ("BinaryLinear", True),
        ("BinaryLinear", False),  # the all-Relax fallback lowering
        ("BinaryConv2d", True),
        ("BinaryConv2d", False),
        ("BinaryAttentionScores", True),
        ("BinaryAttentionScores", False),
        ("QDAttentionContext", True),
        ("QDAttentionContext", False),
        ("GSBAttentionContext", True),
        ("GSBAttentionContext", False),
    ],
)
def test_single_op_matches_function_body(op: str, packed: bool) -> None:
    model, x = _single_op_model(op, np.random.default_rng(zlib.crc32(op.encode())))
    want = _ort(model, {"x": x})
    got = run(build(import_fused(model, batch=1, packed=packed, overrides=_QD_PACKED)), x)  # the opt-in QD kernel too
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


_PACKED_PREFIXES = {
    "BinaryConv2d": "bhvit_bconv_",
    "BinaryAttentionScores": "bhvit_scores_",
    "QDAttentionContext": "bhvit_qd_context_",
    "GSBAttentionContext": "bhvit_gsb_context_",
}
#: Ops lowered to packed kernels on llvm by default (QD context is opt-in: float measured faster).
_PACKED_BY_DEFAULT = ("BinaryConv2d", "BinaryAttentionScores")


@pytest.mark.parametrize("op", sorted(_PACKED_PREFIXES))
@pytest.mark.parametrize("how", ["llvm", "packed=False", "cuda"])
def test_packed_kernels_for_llvm_and_cuda_targets(op: str, how: str) -> None:
    """conv/attention use the packed kernels on llvm and cuda (GPU schedules); packed=False keeps Relax ops.
    GSB's context has no GPU kernel yet: on cuda it takes the float Relax lowering."""
    model, _ = _single_op_model(op, np.random.default_rng(0))
    target = {"kind": "cuda"} if how == "cuda" else None
    mod = import_fused(model, batch=1, target=target, packed=how != "packed=False", overrides=_QD_PACKED)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    packed_here = how == "llvm" or (how == "cuda" and op != "GSBAttentionContext")
    assert any(n.startswith(_PACKED_PREFIXES[op]) for n in names) == packed_here


@pytest.mark.parametrize("target, packed", [
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, True),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, False),
])
def test_qd_context_default_is_packed_on_aarch64_only(target: dict, packed: bool) -> None:
    """The NEON QD kernel (``attention_neon``) replaces the float lowering on aarch64 by default;
    x86 keeps the float lowering (the lowering table's QDAttentionContext rows)."""
    model, _ = _single_op_model("QDAttentionContext", np.random.default_rng(0))
    names = {gv.name_hint for gv in import_fused(model, batch=1, target=target).get_global_vars()}
    assert any(n.startswith("bhvit_qd_context_") for n in names) == packed


def _fused_fixture(name: str):
    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model
    from tests.conftest import official_path

    path = official_path(name)
    return path, fuse_model(export_reference(load_checkpoint(path / "checkpoint.pth").model))


@pytest.fixture(scope="module")
def micro_fused():
    return _fused_fixture("micro")


@host_only
@pytest.mark.parametrize("name", ["micro", "micro-binary-embed"])
def test_micro_fixture_matches_official_logits(name: str, micro_fused) -> None:
    """End to end with every bhvit op on its packed kernel (binary-embed adds 2x2/stride-2 convs)."""
    path, fused = micro_fused if name == "micro" else _fused_fixture(name)
    machine = vm(build(import_fused(fused, batch=1)))
    inputs = np.load(path / "inputs.npy")
    official = np.load(path / "logits.npy")
    got = np.concatenate([run(machine, inputs[i : i + 1]) for i in range(len(inputs))])
    metrics = assert_end_to_end(got, official)
    assert metrics["top1_agree"] == 1.0


def test_micro_imports_with_packed_kernels(micro_fused) -> None:
    _, fused = micro_fused
    mod = import_fused(fused, batch=1)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    n_linear = sum(n.op_type == "BinaryLinear" for n in fused.graph.node)
    assert n_linear > 0
    assert any(n.startswith("bhvit_bgemm_") for n in names)
    assert any(n.startswith("bhvit_pack_") for n in names)
    for op, prefix in _PACKED_PREFIXES.items():
        if op == "GSBAttentionContext":  # micro is a QD model; micro-gsb is checked in test_bundle_variants
            assert not any(n.op_type == op for n in fused.graph.node)
            continue
        assert any(n.op_type == op for n in fused.graph.node)
        assert any(n.startswith(prefix) for n in names) == (op in _PACKED_BY_DEFAULT), op


def _tiny(nodes, extra_domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    opsets = [helper.make_opsetid("", ONNX_OPSET)] + [helper.make_opsetid(d, 1) for d in extra_domains]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("domain", [DOMAIN, "com.x"])
def test_unknown_op_raises_target_error_naming_it(domain: str) -> None:
    model = _tiny([helper.make_node("Foo", ["x"], ["y"], domain=domain)], [domain])
    with pytest.raises(TargetError, match=rf"{domain}\.Foo"):
        import_fused(model)


def test_all_unsupported_ops_listed_at_once() -> None:
    model = _tiny(
        [
            helper.make_node("Foo", ["x"], ["a"], domain="com.x"),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("NoSuchStandardOp", ["b"], ["c"]),
            # one of our op names, but outside the bhvit domain: not ours
            helper.make_node("BinaryLinear", ["c"], ["y"], domain="com.other"),
        ],
        ["com.x", "com.other"],
    )
    assert unsupported_ops(model) == ["NoSuchStandardOp", "com.other.BinaryLinear", "com.x.Foo"]
    with pytest.raises(TargetError) as err:
        import_fused(model)
    for name in ("com.x.Foo", "NoSuchStandardOp", "com.other.BinaryLinear"):
        assert name in str(err.value)
    assert "Relu" not in str(err.value)


def test_convert_map_restored_after_import() -> None:
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    original = fe._get_convert_map
    with pytest.raises(RuntimeError):
        with bhvit_converters():
            assert "BinaryLinear" in fe._get_convert_map()
            raise RuntimeError("boom")
    assert fe._get_convert_map is original
    assert "BinaryLinear" not in fe._get_convert_map()


@host_only
@pytest.mark.parametrize("packed", [True, False])
def test_mlp_expand_pair_matches_function_bodies(packed: bool) -> None:
    """BinaryExpandPack -> PackedBinaryLinear (``passes/mlp_expand.py``) against onnxruntime."""
    from bhvit_export.passes.pipeline import fuse_model
    from tests.passes.graphs import mlp_graph

    rng = np.random.default_rng(7)
    fused = fuse_model(mlp_graph(rng, 32, 4))
    assert {n.op_type for n in fused.graph.node if n.domain == DOMAIN} == {"BinaryExpandPack", "PackedBinaryLinear"}
    x = rng.standard_normal((2, 3, 32)).astype(np.float32)
    mod = import_fused(fused, batch=2, packed=packed)
    names = {gv.name_hint for gv in mod.get_global_vars()}
    assert any(n.startswith("bhvit_expand_pack_") for n in names) == packed
    got = run(build(mod), x)
    want = _ort(fused, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("slopes, unit", [(0.25, True), (-0.5, False)])
def test_mlp_expand_takes_the_folded_kernel_on_aarch64(slopes: float, unit: bool) -> None:
    """On aarch64 the expansion's constants are folded at import (``expand_pack_neon``): the kernel
    takes ``params [N/4, 4, 4]`` and ``mb2``, and uses ``fmax`` for the RPReLU only when every slope
    is in [0, 1]; the binary linear after it takes the folded GEMM; x86 keeps the unfolded kernels."""
    from bhvit_export.passes.pipeline import fuse_model
    from tests.passes.graphs import mlp_graph

    graph = mlp_graph(np.random.default_rng(9), 64, 4)
    (init,) = [i for i in graph.graph.initializer if i.name == "slope"]
    init.CopyFrom(numpy_helper.from_array(np.full(256, slopes, np.float32), "slope"))
    fused = fuse_model(graph)
    a72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    mod = import_fused(fused, batch=2, target=a72)
    (fn,) = [mod[gv] for gv in mod.get_global_vars() if gv.name_hint.startswith("bhvit_expand_pack_")]
    assert [str(p.name) for p in fn.params][:5] == ["a_bits", "x", "w_t", "params", "mb2"]
    assert ("llvm.aarch64.neon.fmax" in fn.script()) == unit
    # the PackedBinaryLinear after it: the folded affine and weights transposed at import (bgemm_folded)
    (bg,) = [mod[gv] for gv in mod.get_global_vars() if gv.name_hint.startswith("bhvit_bgemm_")]
    assert [str(p.name) for p in bg.params][:4] == ["a_bits", "w_t_bits", "ns2", "kb"]
    x86 = import_fused(fused, batch=2, target={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
    (fn86,) = [x86[gv] for gv in x86.get_global_vars() if gv.name_hint.startswith("bhvit_expand_pack_")]
    assert "params" not in [str(p.name) for p in fn86.params]


def test_mlp_expand_pair_imports_for_cuda() -> None:
    """On CUDA the expansion is the GPU bgemm + Relax epilogue + the GPU sign-pack (no CPU kernel)."""
    from bhvit_export.passes.pipeline import fuse_model
    from tests.passes.graphs import mlp_graph

    fused = fuse_model(mlp_graph(np.random.default_rng(8), 64, 2))
    names = {gv.name_hint for gv in import_fused(fused, batch=2, target={"kind": "cuda"}).get_global_vars()}
    assert not any(n.startswith("bhvit_expand_pack_") for n in names)
    assert any(n.startswith("bhvit_pack_") for n in names) and any(n.startswith("bhvit_bgemm_") for n in names)
