"""Issue #16 points 1 and 8: a file given to the wrong command is named, with the command that takes it;
``compile`` refuses the float reference graph unless ``--allow-float``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from bhvit_export.cli import cli
from bhvit_export.file_kinds import identify
from tests.helpers import is_error_line, official_path


def _error(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("... ")]
    assert len(lines) == 1 and is_error_line(lines[0]), res.stderr
    return res.exit_code, lines[0]


def test_onnx_given_to_to_onnx_names_compile(fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    code, line = _error("to-onnx", str(fused_onnx("micro")), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "is a fused BHViT ONNX model" in line and "bhvit-export compile" in line
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_given_to_compile_names_to_onnx(tmp_path: Path) -> None:
    ckpt = official_path("micro") / "checkpoint.pth"
    code, line = _error("compile", str(ckpt), "-o", str(tmp_path / "b"))
    assert code == 2 and "is a PyTorch checkpoint" in line and f"bhvit-export to-onnx {ckpt}" in line


def test_folder_given_to_compile(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(official_path("micro") / "checkpoint.pth", folder / "checkpoint.pth")
    code, line = _error("compile", str(folder), "-o", str(tmp_path / "b"))
    assert code == 2 and "a folder holding checkpoint.pth" in line and "to-onnx" in line


def test_bundle_given_to_compile_names_verify(micro_bundle: Path, tmp_path: Path) -> None:
    code, line = _error("compile", str(micro_bundle), "-o", str(tmp_path / "b"))
    assert code == 2 and "is a bundle" in line and f"bhvit-export verify {micro_bundle}" in line


def test_onnx_given_to_verify_names_compile(fused_onnx: Callable[[str], Path]) -> None:
    code, line = _error("verify", str(fused_onnx("micro")))
    assert code == 2 and "bhvit-export compile" in line


def test_identify_does_not_unpickle(tmp_path: Path) -> None:
    """A legacy-format pickle is recognised by its magic only; unknown bytes are left to the loader."""
    (tmp_path / "old.pth").write_bytes(b"\x80\x02cposix\nsystem\n")
    kind = identify(tmp_path / "old.pth")
    assert kind is not None and kind.kind == "checkpoint"
    (tmp_path / "junk.bin").write_bytes(b"hello")
    assert identify(tmp_path / "junk.bin") is None


def test_compile_refuses_the_reference_graph(reference_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    code, line = _error("compile", str(reference_onnx("micro")), "-o", str(tmp_path / "b"))
    assert code == 2 and "has no bhvit ops" in line and "run to-onnx without --reference" in line
    assert "--allow-float" in line and not (tmp_path / "b").exists()
