"""Reproducibility (issue #7): one checkpoint -> byte-identical ONNX; one ONNX + target -> the same bundle.

Later steps key on bytes (the bundle records the ONNX's SHA-256, devices compare manifests), so
repeating a step must repeat its output. The reference-graph case is in ``test_checkpoint.py``
(``test_same_checkpoint_gives_identical_bytes``); the fused graph and the bundle are here. What the
bundle's bytes do depend on (host CPU, compiler, TVM versions) is listed in ``docs/errors.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from bhvit_export.cli import cli
from tests.helpers import official_path


def test_fused_export_is_byte_identical(fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    """The session's fused export (library call) and a second one through the CLI."""
    again = tmp_path / "again.onnx"
    res = CliRunner().invoke(cli, ["to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(again)])
    assert res.exit_code == 0, res.stderr
    assert again.read_bytes() == fused_onnx("micro").read_bytes()


def _comparable(manifest: Any) -> dict[str, Any]:
    """The manifest without what ``--no-native`` leaves out (the runner and runtime libraries)."""
    obj = manifest.to_json()
    obj.pop("native")
    obj["files"] = {k: v for k, v in obj["files"].items() if not k.startswith("runtime/")}
    return obj


def test_same_onnx_and_target_give_the_same_bundle(micro_bundle: Path, fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    """A second compile of the session's micro bundle (same ONNX, target, golden files; without the
    native runner to save time): every file's SHA-256 and the rest of the manifest are equal."""
    pytest.importorskip("tvm")
    from bhvit_export.bundle import manifest as mf

    src = official_path("micro")
    again = tmp_path / "again"
    res = CliRunner().invoke(cli, [
        "compile", str(fused_onnx("micro")), "-o", str(again), "--target", "x86_64", "--no-native",
        "--golden-inputs", str(src / "inputs.npy"), "--golden-outputs", str(src / "logits.npy"),
    ])
    assert res.exit_code == 0, res.stderr
    first, second = mf.check_bundle(micro_bundle), mf.check_bundle(again)
    differ = sorted(k for k in set(first.files) | set(second.files)
                    if not k.startswith("runtime/") and first.files.get(k) != second.files.get(k))
    assert differ == [], f"files that differ between two compiles: {differ}"
    assert _comparable(first) == _comparable(second)
