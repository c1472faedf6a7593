"""Convs of one input and shift read one sign-packed grid (``importer.shared_conv_grids``).

BHViT's GC block: three binary 3x3 convs, dilations 1/3/5 ('same' pads 1/3/5), on the same
shifted input. On aarch64 (the folded NEON conv) the input is packed once, padded by 5, and each
conv reads it at its offset. Structure on the imported module; numbers under qemu (the native
runner) against onnxruntime on the float graph.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

pytest.importorskip("tvm")

from bhvit_export.passes.pipeline import fuse_model  # noqa: E402
from bhvit_export.targets.importer import import_fused, shared_conv_grids  # noqa: E402
from tests.passes.graphs import _model, binary_weight  # noqa: E402

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
HASWELL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


def gc_graph(rng: np.random.Generator, c: int = 64, hw: int = 9, *, same_shift: bool = True,
             dils: tuple[int, ...] = (1, 3, 5)) -> onnx.ModelProto:
    """x[1,C,H,W] -> for each dilation d: Conv(Sign(x + shift_d), W_d, b_d; pads d, group 4) -> summed.
    ``same_shift``: every conv's shift has the same values (separate initializers, as exported)."""
    shift = rng.standard_normal((1, c, 1, 1)).astype(np.float32) * 0.1
    inits, nodes, outs = {}, [], []
    for i, d in enumerate(dils):
        sh = shift if same_shift else rng.standard_normal((1, c, 1, 1)).astype(np.float32) * 0.1
        inits |= {f"s{i}": sh.copy(), f"W{i}": binary_weight(rng, (c, c // 4, 3, 3)),
                  f"B{i}": rng.standard_normal(c).astype(np.float32)}
        nodes += [helper.make_node("Add", ["x", f"s{i}"], [f"xs{i}"]), helper.make_node("Sign", [f"xs{i}"], [f"sx{i}"]),
                  helper.make_node("Conv", [f"sx{i}", f"W{i}", f"B{i}"], [f"y{i}"], name=f"cov{i}", kernel_shape=[3, 3],
                                   strides=[1, 1], dilations=[d, d], pads=[d] * 4, group=4)]
        outs.append(f"y{i}")
    nodes.append(helper.make_node("Sum", outs, ["y"]))
    return _model(nodes, [("x", [1, c, hw, hw])], ["y"], inits)


def _calls(graph: onnx.ModelProto, target: dict) -> tuple[int, int]:
    s = import_fused(fuse_model(graph), batch=1, target=target)["main"].script()
    return len(re.findall(r"R.call_tir\(bhvit_sign_pack_nhwc", s)), len(re.findall(r"R.call_tir\(bhvit_bconv_nhwc", s))


def test_grids_group_convs_by_input_and_shift() -> None:
    fused = fuse_model(gc_graph(np.random.default_rng(0)))
    grids = shared_conv_grids(fused)
    assert len(grids) == 3 and set(grids.values()) == {(5, 5, 5, 5)}
    assert not shared_conv_grids(fuse_model(gc_graph(np.random.default_rng(0), same_shift=False)))


def test_one_pack_for_three_convs_on_aarch64() -> None:
    assert _calls(gc_graph(np.random.default_rng(1)), A72) == (1, 3)
    assert _calls(gc_graph(np.random.default_rng(1), same_shift=False), A72) == (3, 3)
    assert _calls(gc_graph(np.random.default_rng(1)), HASWELL) == (3, 3)  # x86: no folded conv, own grids


# --- numbers under qemu ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aarch64_runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bhvit_export.targets.native_build import build_runner
    from tests.targets.test_native import aarch64_libs, need

    need("aarch64-g++", "qemu-aarch64")
    aarch64_libs()
    return build_runner("aarch64", tmp_path_factory.mktemp("runner-gc"))


@settings(max_examples=3, deadline=None)
@given(hw=st.integers(3, 12), dils=st.sampled_from([(1, 3, 5), (2, 1), (1, 1, 4)]), seed=st.integers(0, 2**31))
def test_shared_grid_matches_onnxruntime_under_qemu(aarch64_runner: Path, tmp_path_factory: pytest.TempPathFactory,
                                                    hw: int, dils: tuple[int, ...], seed: int) -> None:
    """Borders of every dilation on small images (the shared grid's extra padding is never read as
    data), one or several pads; the fused sums against onnxruntime's float convs of sign(x + s)."""
    import onnxruntime as ort

    from bhvit_export.targets.build import build
    from bhvit_export.targets.native_build import export_library
    from bhvit_export.targets.native_run import run_native

    rng = np.random.default_rng(seed)
    graph = gc_graph(rng, hw=hw, dils=dils)
    x = rng.standard_normal((1, 64, hw, hw)).astype(np.float32)
    want = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    tmp = tmp_path_factory.mktemp("gc")
    lib = export_library(build(import_fused(fuse_model(graph), batch=1, target=A72), A72), tmp / "m.so", "aarch64")
    np.save(tmp / "x.npy", x)
    run_native(aarch64_runner, lib, tmp / "x.npy", tmp / "y.npy", arch="aarch64", batch=1)
    got = np.load(tmp / "y.npy").reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
