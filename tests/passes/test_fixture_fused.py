"""The fused model on the official fixtures: census, and logits vs reference and official."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bhvit_export.census import census
from bhvit_export.config import BHViTConfig
from bhvit_export.export.reference import export_reference
from bhvit_export.model import BHViT
from bhvit_export.passes.pipeline import FuseReport, fuse_model
from tests.helpers import assert_end_to_end
from tests.passes.util import run

from tests.helpers import OFFICIAL as FIXTURES  # noqa: E402
from tests.helpers import OFFICIAL_NAMES, input_sets  # noqa: E402


@pytest.fixture(scope="module", params=list(OFFICIAL_NAMES))
def fixture(request: pytest.FixtureRequest) -> tuple[Path, onnx.ModelProto, onnx.ModelProto, FuseReport]:
    d = FIXTURES / request.param
    if not d.is_dir():
        pytest.skip(f"official fixtures not found at {d}")
    from bhvit_export.checkpoint import load_checkpoint

    ref = export_reference(load_checkpoint(d / "checkpoint.pth", config_json=d / "config.json").model)
    rep = FuseReport()
    return d, ref, fuse_model(ref, rep), rep


def test_every_binary_layer_is_packed(fixture) -> None:
    d, ref, fused, rep = fixture
    cfg = BHViTConfig(depths=(1, 1, 2, 1), num_labels=10)
    n_attn, n_blocks = cfg.num_layers_b, sum(cfg.depths)
    ops = Counter(n.op_type for n in fused.graph.node)
    layernorm = "-ln" in d.name
    # 4 dense (q,k,v,out) per attention block; each MLP an expansion writing packed bits and the
    # packed-input output layer (BatchNorm models: the expansion's BN folds into it; a LayerNorm
    # between the expansion and its residual keeps two plain BinaryLinears); 3 GC convs per conv block.
    if layernorm:
        assert ops["BinaryLinear"] == 4 * n_attn + 2 * n_blocks and ops["BinaryExpandPack"] == 0
        assert rep.counts["fold_epilogue"] == 0  # LayerNorm is not a per-channel affine
    else:
        assert ops["BinaryLinear"] == 4 * n_attn
        assert ops["BinaryExpandPack"] == ops["PackedBinaryLinear"] == n_blocks == rep.counts["mlp_expand"]
        assert rep.counts["fold_epilogue"] > 0
    binary_embed = "binary-embed" in d.name
    assert ops["BinaryConv2d"] == 3 * cfg.num_layers_a + (3 if binary_embed else 0)
    context = "GSBAttentionContext" if "gsb" in d.name else "QDAttentionContext"
    assert ops["BinaryAttentionScores"] == n_attn and ops[context] == n_attn
    assert "Sign" not in ops and "Round" not in ops
    # The float remainder: the stem (+ full-precision downsampling) and the classifier.
    assert ops["Conv"] == (1 if binary_embed else 4) and ops["Gemm"] == 1 and ops["MatMul"] == 0


def test_fused_matches_reference_and_official(fixture) -> None:
    d, ref, fused, _ = fixture
    for name, x, official in input_sets(d):
        got = run(fused, {"pixel_values": x})[0]
        assert_end_to_end(got, official, what=f"{d.name} {name} fused vs official")
        assert_end_to_end(got, run(ref, {"pixel_values": x})[0], what=f"{d.name} {name} fused vs reference")


def test_census_counts_binary_and_float_work(fixture) -> None:
    _, ref, fused, _ = fixture
    c_ref, c_fused = census(ref), census(fused)
    assert c_ref.bops == 0 and c_fused.bops > 0
    # Binarizing moves MACs from FLOPs to BOPs one for one (QD counts 3 products per P.V).
    qd = sum(o["bops"] for o in c_fused.per_op_cost if o["op"] in ("QDAttentionContext", "GSBAttentionContext"))
    assert c_ref.flops == c_fused.flops + c_fused.bops - qd + qd // 3
    assert c_fused.binary_params > 0 and c_fused.float_params < c_ref.float_params


def test_tiny_fused_file_is_at_most_a_fifth_of_the_reference() -> None:
    torch.manual_seed(0)
    model = BHViT(BHViTConfig())  # the paper's Tiny, full-precision downsampling (Tiny dagger)
    ref = export_reference(model)
    fused = fuse_model(ref)
    ratio = ref.ByteSize() / fused.ByteSize()
    assert ratio >= 5, ratio
    c = census(fused)
    assert 1.0e8 <= c.total_ops <= 1.4e8  # Table 2: 1.1e8 (see docs/inspect.md for the gap)
