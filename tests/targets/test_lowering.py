"""The lowering context and kernel tables (``targets/lowering.py``).

* the tables are complete: every (op, architecture) has a row, every kind in a row is a kernel of
  that architecture, every builder resolves;
* two imports with different targets in one process share no state: x86 -> aarch64 -> x86 gives
  the first module again, and a ``packed=False`` import leaves the next default import packed;
* the kernel cache is bounded and keyed by target;
* overrides that name no kernel of the architecture are refused.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.passes.op_schema import OP_TYPES  # noqa: E402
from bhvit_export.passes.ops import DOMAIN, ONNX_OPSET, function_protos, pack_bits  # noqa: E402
from bhvit_export.targets.importer import bhvit_converters, import_fused  # noqa: E402
from bhvit_export.targets.kernels.target_info import AARCH64_CORTEX_A72, X86_AVX2, X86_SAPPHIRERAPIDS  # noqa: E402
from bhvit_export.targets.lowering import (  # noqa: E402
    ARCHS,
    KERNEL_CACHE_SIZE,
    KERNELS,
    OP_KERNELS,
    LoweringContext,
    architecture,
    describe,
    kernel_cache_info,
)


def _linear_model(k: int = 100, n: int = 24) -> onnx.ModelProto:
    """x [B, 7, K] ──BinaryLinear(K -> N)──> y."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), "shift"),
        numpy_helper.from_array(pack_bits(rng.standard_normal((n, k))), "w"),
        numpy_helper.from_array(rng.random(n).astype(np.float32) + 0.5, "scale"),
        numpy_helper.from_array(np.zeros(n, np.float32), "bias"),
    ]
    node = helper.make_node("BinaryLinear", ["x", "shift", "w", "scale", "bias"], ["y"], domain=DOMAIN, in_features=k)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 7, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)],
                              functions=function_protos({"BinaryLinear"}))
    model.ir_version = 8
    return model


def test_tables_are_complete_and_resolve() -> None:
    for arch in ARCHS:
        for op in OP_TYPES:
            kinds = OP_KERNELS[(op, arch)]
            assert all((kind, arch) in KERNELS for kind in kinds), (op, arch, kinds)
    assert all(OP_KERNELS[(op, "generic")] == () for op in OP_TYPES)
    table = describe().splitlines()
    assert len(table) == 1 + len(OP_TYPES) and table[6].split() == ["QDAttentionContext", "float", "float", "qd_context", "qd_context"]
    for spec in set(KERNELS.values()):
        module, name = spec.builder.split(":")
        assert callable(getattr(importlib.import_module(module), name)), spec.builder
        if spec.supports:
            module, name = spec.supports.split(":")
            assert callable(getattr(importlib.import_module(module), name)), spec.supports


@pytest.mark.parametrize(
    ("target", "arch"),
    [
        (X86_SAPPHIRERAPIDS, "avx512"),
        (X86_AVX2, "avx2"),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, "sse2"),
        (AARCH64_CORTEX_A72, "neon"),
        ({"kind": "cuda", "arch": "sm_87"}, "cuda"),
        ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "generic"),
    ],
)
def test_architecture_of_targets(target: dict, arch: str) -> None:
    ctx = LoweringContext.for_target(target)
    assert ctx.arch == arch == architecture(ctx.target)
    if arch in ("avx512", "avx2", "neon"):
        assert ctx.record is not None and ctx.record.name == arch
    if arch == "generic":  # only x86-64 and aarch64 have checked CPU schedules: float Relax ops
        assert not any(ctx.kernels.values())


def test_packed_false_and_overrides() -> None:
    assert not any(LoweringContext.for_target(X86_AVX2, packed=False).kernels.values())
    default = LoweringContext.for_target(X86_AVX2)
    assert not default.uses("QDAttentionContext", "qd_context")  # float measured faster on CPUs
    forced = LoweringContext.for_target(X86_AVX2, overrides={"QDAttentionContext": ("qd_context",)})
    assert forced.uses("QDAttentionContext", "qd_context") and forced.kernels["BinaryLinear"] == default.kernels["BinaryLinear"]
    with pytest.raises(TargetError, match="no gsb_context kernel on cuda"):
        LoweringContext.for_target({"kind": "cuda"}, overrides={"GSBAttentionContext": ("gsb_context",)})
    with pytest.raises(TargetError, match="not a bhvit op"):
        LoweringContext.for_target(X86_AVX2, overrides={"Conv": ()})
    with pytest.raises(TypeError):
        default.kernels["BinaryLinear"] = ()  # type: ignore[index]


def test_two_imports_with_different_targets_do_not_leak() -> None:
    model = _linear_model()
    x86 = import_fused(model, target=X86_AVX2).script()
    arm = import_fused(model, target=AARCH64_CORTEX_A72).script()
    again = import_fused(model, target=X86_AVX2).script()
    assert again == x86 != arm
    assert "llvm.aarch64.neon" in arm and "llvm.aarch64.neon" not in x86
    relax_only = import_fused(model, target=X86_AVX2, packed=False).script()
    assert "bhvit_bgemm_" not in relax_only
    assert import_fused(model, target=X86_AVX2).script() == x86  # packed=False did not stick


def test_bhvit_converters_yields_its_context() -> None:
    """The context's choices, with state of its own per import (the shared sign-packed grids)."""
    ctx = LoweringContext.for_target(AARCH64_CORTEX_A72, packed=False)
    with bhvit_converters(context=ctx) as bound:
        assert bound == ctx and bound.shared == {}  # the same choices; its own per-import state
        bound.shared["x"] = 1
    with bhvit_converters(context=ctx) as again:
        assert again.shared == {} and not ctx.shared
    with bhvit_converters(X86_AVX2) as bound:
        assert bound.arch == "avx2" and bound.packed
    with pytest.raises(TypeError):
        with bhvit_converters(X86_AVX2, context=ctx):
            pass


def test_kernel_cache_is_bounded_and_keyed_by_target() -> None:
    info = kernel_cache_info()
    assert info.maxsize == KERNEL_CACHE_SIZE
    x86, arm = LoweringContext.for_target(X86_AVX2), LoweringContext.for_target(AARCH64_CORTEX_A72)
    a = x86.kernel("bgemm", 7, 24, 100)
    hits = kernel_cache_info().hits
    assert x86.kernel("bgemm", 7, 24, 100).same_as(a) and kernel_cache_info().hits == hits + 1
    assert LoweringContext.for_target(X86_AVX2).kernel("bgemm", 7, 24, 100).same_as(a)  # an equal target shares it
    assert not arm.kernel("bgemm", 7, 24, 100).same_as(a)
    assert kernel_cache_info().currsize <= KERNEL_CACHE_SIZE
