"""The CLI contract: instant --help, exit codes per kind of failure, JSON report, Ctrl-C safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bhvit_export
from bhvit_export.atomic import atomic_path
from bhvit_export.cli import cli
from tests.helpers import REPO


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def run_module(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m bhvit_export`` in a fresh process: the real entry point, real stderr."""
    return subprocess.run(
        [sys.executable, "-m", "bhvit_export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from bhvit_export.cli import cli;"
        "r = CliRunner().invoke(cli, ['to-onnx', '--help']); assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tvm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_python_m_version() -> None:
    proc = run_module("--version", timeout=60)
    assert proc.returncode == 0 and bhvit_export.__version__ in proc.stdout


def test_python_m_error_is_one_line(tmp_path: Path) -> None:
    proc = run_module("to-onnx", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "x.onnx"), "--reference")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error[checkpoint]: no such file: {tmp_path / 'nope.pth'}"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("to-onnx").exit_code == 2  # missing CKPT and -o
    assert run_cli("to-onnx", "x.pth").exit_code == 2  # missing -o
    assert run_cli("to-onnx", "x.pth", "-o", "y.onnx", "--entry", "nonsense").exit_code == 2
    assert run_cli("to-onnx", "x.pth", "-o", "y.onnx", "--opset", "11").exit_code == 2
    assert run_cli("no-such-command").exit_code == 2


def test_json_report(tmp_path: Path, micro: Path) -> None:
    out = tmp_path / "m.onnx"
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(out), "--reference", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is the JSON object and nothing else
    assert report["kind"] == "reference" and report["entry"] == "model"
    assert report["output_bytes"] == out.stat().st_size
    assert report["config"]["depths"] == [1, 1, 2, 1] and report["config"]["num_labels"] == 10
    assert set(report["seconds"]) >= {"load", "export", "write", "total"}
    assert out.stat().st_mode & 0o044, "the output must be readable like any file open() writes"


def test_output_is_a_directory(tmp_path: Path, micro: Path) -> None:
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(tmp_path), "--reference")
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        f"error[export]: -o {tmp_path} is a directory; give the path of the .onnx file to write"
    ]


def _tiny_export(model: Any, **_k: Any) -> Any:
    import onnx

    return onnx.ModelProto()


def _interrupt_while_writing(proto: Any, path: Any) -> int:
    """A save_model that is Ctrl-C'd after writing half the bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"\x08half a model")
        raise KeyboardInterrupt


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path: Path, micro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.export.reference as reference

    monkeypatch.setattr(reference, "export_reference", _tiny_export)  # the export is not under test
    monkeypatch.setattr(reference, "save_model", _interrupt_while_writing)
    out_dir = tmp_path / "out"
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(out_dir / "m.onnx"), "--reference")
    assert result.exit_code == 130
    assert result.stderr.splitlines() == ["error[interrupted]: interrupted; nothing was written"]
    assert not out_dir.exists(), "the folder made for the output was left"


def test_unexpected_error_exits_3_with_hint(tmp_path: Path, micro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.checkpoint as checkpoint

    def boom(*_a: Any, **_k: Any) -> None:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(checkpoint, "load_checkpoint", boom)
    args = ["to-onnx", str(micro / "checkpoint.pth"), "-o", str(tmp_path / "m.onnx"), "--reference"]
    result = run_cli(*args)
    assert result.exit_code == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("error[internal]: unexpected ZeroDivisionError: simulated bug") and "--debug" in line
    debug = run_cli("--debug", *args)
    assert debug.exit_code == 3 and "Traceback" in debug.stderr and "boom" in debug.stderr


def test_debug_shows_traceback_of_user_errors(tmp_path: Path) -> None:
    result = run_cli("--debug", "to-onnx", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "m.onnx"), "--reference")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error[checkpoint]: no such file")


def test_fused_export_unavailable_without_passes(tmp_path: Path, micro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bhvit_export.passes.pipeline", None)  # import of bhvit_export.passes.pipeline now fails
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error[export]: the fused export is unavailable in this build (bhvit_export.passes.pipeline.fuse_model not found); "
        "use --reference for the float reference graph"
    ]


def test_fused_export(tmp_path: Path, micro: Path) -> None:
    """The default (no --reference) runs the passes; what they produce is tested in their own tests."""
    pytest.importorskip("bhvit_export.passes.pipeline")
    import onnx

    out = tmp_path / "fused.onnx"
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "fused"
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]


def test_inspect_fused_and_reference(tmp_path: Path, micro: Path) -> None:
    """inspect reads both graphs: the fused one has BOPs, the reference none; --json is one object."""
    ref, fused = tmp_path / "ref.onnx", tmp_path / "fused.onnx"
    assert run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(ref), "--reference").exit_code == 0
    assert run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(fused)).exit_code == 0
    r, f = (json.loads(run_cli("inspect", str(p), "--json").stdout) for p in (ref, fused))
    assert r["bops"] == 0 and f["bops"] > 0 and f["flops"] < r["flops"]
    assert set(f["binary_ops"]) == {
        "BinaryLinear", "BinaryExpandPack", "PackedBinaryLinear", "BinaryConv2d", "BinaryAttentionScores", "QDAttentionContext"
    }
    assert f["total_ops"] == f["bops"] / 64 + f["flops"]
    text = run_cli("inspect", str(fused))
    assert text.exit_code == 0 and "OPs" in text.output and "BinaryLinear" in text.output


@pytest.mark.parametrize("content", [b"", b"not onnx at all", b"\x08\x07" * 50])
def test_inspect_bad_file_is_one_line_exit_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    result = run_module("inspect", str(bad))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_inspect_reports_the_paper_row_for_tiny(tmp_path: Path) -> None:
    """A Tiny-dagger export carries its paper row; inspect puts Table 2 beside our numbers."""
    import torch

    from bhvit_export.config import BHViTConfig
    from bhvit_export.export.reference import export_reference, save_model
    from bhvit_export.model import BHViT
    from bhvit_export.passes.pipeline import fuse_model

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    save_model(fuse_model(export_reference(BHViT(BHViTConfig()))), path)
    out = json.loads(run_cli("inspect", str(path), "--json").stdout)
    assert out["paper"]["row"] == "tiny-fp-downsampling" and out["paper"]["paper_ops"] == 1.1e8
    assert 1.0e8 <= out["paper"]["ours_ops"] <= 1.4e8
