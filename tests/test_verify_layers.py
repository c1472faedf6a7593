"""``verify-layers``: each block teacher-forced against recorded activations; the first bad block named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from bhvit_export.cli import cli
from bhvit_export.verify.layers import find_blocks, verify_layers
from tests.helpers import official_path

BLOCKS = [
    "vit.embeddings", "vit.encoder.layerA.0", "vit.encoder.patch_embed1", "vit.encoder.layerA.1",
    "vit.encoder.patch_embed2", "vit.encoder.layerB.0", "vit.encoder.layerB.1", "vit.encoder.patch_embed3",
    "vit.encoder.layerB.2",
]


def test_every_block_of_the_layernorm_model_is_checked(fused_onnx: Callable[[str], Path]) -> None:
    """micro-ln-nols is the fragile one end to end; block by block it must be tight."""
    report = verify_layers(fused_onnx("micro-ln-nols"), intermediates=official_path("micro-ln-nols"))
    assert [b["block"] for b in report.blocks] == BLOCKS
    assert report.passed and all(b["cosine"] >= 0.9995 for b in report.blocks)


def test_a_broken_block_is_named(fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    """Scale one GSB context's weights: layerB.1 fails, the blocks before it still pass."""
    proto = onnx.load(str(fused_onnx("micro-gsb")))
    for init in proto.graph.initializer:
        if init.name.startswith("/vit/encoder/layerB.1/") and init.name.endswith("/weights"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(3.0), init.name))
            break
    else:
        pytest.fail("no GSB weights initializer in layerB.1")
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    assert [b.name for b in find_blocks(proto)] == BLOCKS
    res = CliRunner().invoke(cli, ["verify-layers", str(bad), "--intermediates", str(official_path("micro-gsb")), "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["first_failing_block"] == "vit.encoder.layerB.1"
    assert all(b["passed"] for b in report["blocks"][:6])


def test_needs_exactly_one_reference(fused_onnx: Callable[[str], Path]) -> None:
    res = CliRunner().invoke(cli, ["verify-layers", str(fused_onnx("micro-gsb"))])
    assert res.exit_code == 2 and res.stderr.strip() == "error[onnx]: give exactly one of --intermediates DIR and --checkpoint CKPT"
