"""The official variants (GSB quantizer; LayerNorm without LayerScale) compiled for this host.

One x86_64 build per fixture (the slow part), then both input sets it ships -- standard-normal and
structured images -- through the Relax VM against the official logits, with the spec's end-to-end
tolerance, and ``verify`` on the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")

from tests.helpers import assert_end_to_end, input_sets, official_path  # noqa: E402

VARIANTS = ("micro-gsb", "micro-ln-nols")


@pytest.fixture(scope="module", params=VARIANTS)
def variant_bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fused_onnx: Callable[[str], Path]
) -> tuple[Path, Path]:
    from bhvit_export.compile import compile_model

    src = official_path(request.param)
    out = tmp_path_factory.mktemp("variants") / f"{request.param}-x86_64"
    compile_model(
        fused_onnx(request.param), out, target="x86_64",
        golden_inputs=src / "inputs.npy", golden_outputs=src / "logits.npy", native=False,
    )
    return src, out


def test_variant_bundle_matches_official_logits(variant_bundle: tuple[Path, Path]) -> None:
    import tvm

    src, bundle = variant_bundle
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(bundle / "model.so")), tvm.cpu())
    for name, x, official in input_sets(src):
        got = np.concatenate([vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))])
        assert_end_to_end(got, official, what=f"{src.name} {name} TVM x86_64")


def test_variant_bundle_verifies(variant_bundle: tuple[Path, Path]) -> None:
    from bhvit_export.cli import cli

    _, bundle = variant_bundle
    res = CliRunner().invoke(cli, ["verify", str(bundle), "--runs", "1", "--warmup", "0", "--no-torch", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True
