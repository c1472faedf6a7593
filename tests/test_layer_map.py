"""Issue #16 point 10: ``verify --profile`` maps compiled functions back to ONNX nodes and model blocks."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bhvit_export.cli import cli
from bhvit_export.layer_map import HEAD, STEM, attribute, block_name, layer_name, short_function_name

NODES = [
    {"op": "BinaryConv2d", "name": "/vit/encoder/layerA.0/GC/cov1/Conv/BinaryConv2d", "layer": "encoder.layerA.0.GC.cov1"},
    {"op": "BinaryLinear", "name": "/vit/encoder/layerB.0/attention/attention/query/MatMul/BinaryLinear",
     "layer": "encoder.layerB.0.attention.attention.query"},
]


def test_calls_are_attributed_to_the_next_anchor() -> None:
    #   stem float -> sign_pack -> bconv (anchor 0) -> float -> pack -> bgemm (anchor 1) -> head float
    calls = [("fused_embed", 1.0), ("bhvit_sign_pack_x", 0.1), ("bhvit_bconv_x", 1.0), ("fused_norm", 0.5),
             ("bhvit_pack_y", 0.1), ("bhvit_bgemm_y", 1.0), ("fused_classifier", 0.2)]
    got = attribute(calls, NODES)
    a, b = NODES[0]["layer"], NODES[1]["layer"]
    assert got == [STEM, a, a, b, b, b, HEAD]


def test_does_not_attribute_when_anchors_disagree() -> None:
    calls = [("bhvit_bgemm_y", 1.0), ("bhvit_bconv_x", 1.0)]  # wrong order for NODES
    assert attribute(calls, NODES) == [None, None]
    assert attribute(calls[:1], NODES) == [None]  # wrong count
    assert attribute(calls, None) == [None, None]  # an older bundle without layers.json


def test_layer_and_block_names() -> None:
    assert layer_name("/vit/encoder/layerB.0/output/dense/MatMul/BinaryLinear/Packed") == "encoder.layerB.0.output.dense"
    assert block_name("encoder.layerB.0.output.dense") == "encoder.layerB.0"
    assert block_name(HEAD) == HEAD


@given(st.lists(st.sampled_from(["reshape9", "strided_slice3", "roll", "1x56x56x64", "a1", "b55", "fast_erf", "add12"]),
                min_size=30, max_size=200))
@settings(max_examples=50, deadline=None)
def test_short_names_are_short_and_name_the_ops(tokens: list[str]) -> None:
    name = "fused_" + "_".join(tokens)
    short = short_function_name(name)
    assert len(short) <= 60
    if len(name) > 60:
        assert "1x56" not in short and "b55" not in short  # shapes and parameters dropped


def test_verify_profile_names_model_blocks(micro_bundle: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), "--runs", "0", "--no-torch", "--profile", "--json"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    blocks = {b["block"] for b in rep["profile_blocks"]}
    assert {"encoder.layerA.0", "encoder.layerB.0", "stem", "head"} <= blocks
    bgemm = [r for r in rep["profile"] if r["name"].startswith("bhvit_bgemm")]
    assert bgemm and all(r["layers"] for r in bgemm)
    assert all(len(r["short"]) <= 60 for r in rep["profile"])
