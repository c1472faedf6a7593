"""Issue #16: targets as TVM strings and a listing, export-time validation, progress, JSON reports, help."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bhvit_export.cli import cli
from bhvit_export.golden import DEFAULT_COUNT
from bhvit_export.progress import Progress
from tests.helpers import official_path


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


# --------------------------------------------------------------------------------------------------
# targets


@pytest.mark.parametrize(
    ("text", "arch", "device", "attr", "value"),
    [
        ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53", "aarch64", "cpu", "mcpu", "cortex-a53"),
        ("cuda -arch=sm_87", "x86_64", "cuda", "arch", "sm_87"),
        ("llvm -mtriple=x86_64-linux-gnu -mcpu=haswell", "x86_64", "cpu", "mcpu", "haswell"),
    ],
)
def test_tvm_target_strings_resolve(text: str, arch: str, device: str, attr: str, value: str) -> None:
    pytest.importorskip("tvm")
    from bhvit_export.targets.target_spec import resolve

    spec = resolve(text)
    assert (spec.arch, spec.device) == (arch, device)
    assert str(spec.target.export()[attr]) == value


@given(st.dictionaries(st.sampled_from(["mcpu", "mtriple", "arch", "num-cores", "mattr"]),
                       st.from_regex(r"[a-z0-9_+.]{1,12}", fullmatch=True), max_size=4))
@settings(max_examples=50, deadline=None)
def test_target_string_parser_round_trips(opts: dict[str, str]) -> None:
    from bhvit_export.targets.target_string import parse_target_string

    text = "llvm " + " ".join(f"-{k}={v}" for k, v in opts.items())
    got = parse_target_string(text)
    assert got.pop("kind") == "llvm" and set(got) == set(opts)
    for k, v in opts.items():
        expect = v.split(",") if k == "mattr" else (int(v) if v.isdigit() else v)
        assert got[k] == expect


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-t", "aarch46"], "did you mean aarch64?"),
        (["-t", "rasberry-pi/4b-aarch64"], "did you mean raspberry-pi/4b-aarch64?"),
        (["-t", "aarch64", "--mcpu", "cortexa53"], "did you mean cortex-a53"),
        (["-t", "x86_64", "--mcpu", "haswel"], "did you mean haswell?"),
    ],
)
def test_target_typos_suggest_the_closest_names(args: list[str], needle: str, tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    res = run("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"), *args)
    assert res.exit_code == 2 and needle in res.stderr, res.stderr


def test_targets_lists_names_tags_and_cpus() -> None:
    pytest.importorskip("tvm")
    res = run("targets", "--json")
    assert res.exit_code == 0, res.stderr
    c = json.loads(res.stdout)
    from bhvit_export.targets.target_spec import SHORT_NAMES

    assert set(c["names"]) == set(SHORT_NAMES)  # one list: what resolve() accepts is what is listed
    assert c["tags"]["raspberry-pi/4b-aarch64"] == {"arch": "aarch64", "device": "cpu"}
    assert c["tags"]["nvidia/jetson-orin-nano"]["device"] == "cuda"
    assert "cortex-a53" in c["cpus"]["aarch64"] and "haswell" in c["cpus"]["x86_64"]
    assert not any(t.startswith(("qcom/hexagon", "apple/")) for t in c["tags"])  # kinds we do not build
    assert c["schema_version"] == 1


# --------------------------------------------------------------------------------------------------
# to-onnx validation


def test_to_onnx_validates_in_onnxruntime(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = run("to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(out), "--reference", "--json")
    assert res.exit_code == 0, res.stderr
    v = json.loads(res.stdout)["validation"]
    assert v["passed"] and v["cosine"] >= 0.9995 and v["top1_agreement"] == 1.0 and v["count"] == DEFAULT_COUNT
    assert "validating" in res.stderr  # progress on stderr with --json


def test_no_validate_skips_it(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = run("to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(out), "--reference", "--no-validate")
    assert res.exit_code == 0 and "not validated (--no-validate)" in res.stdout


def test_validation_failure_exits_1_and_keeps_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.validate as validate

    monkeypatch.setitem(validate.TOLERANCES, "min_cosine", 1.5)  # unreachable: every export fails
    out = tmp_path / "m.onnx"
    res = run("to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(out), "--reference")
    assert res.exit_code == 1 and out.is_file()
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error[")]
    assert "disagrees with PyTorch beyond the tolerance" in line and str(out) in line and "cosine" in line
    assert "FAIL (cosine" in res.stdout


# --------------------------------------------------------------------------------------------------
# progress


def test_progress_prints_periodic_lines_without_a_tty() -> None:
    buf = io.StringIO()
    with Progress(buf, tty=False, every=0.05).step("building"):
        time.sleep(0.3)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "... building" and lines[-1].startswith("... building: done in ")
    assert any(ln.endswith("s elapsed") for ln in lines[1:-1])


def test_progress_spinner_with_elapsed_time_on_a_tty() -> None:
    pytest.importorskip("tqdm")
    buf = io.StringIO()
    with Progress(buf, tty=True).step("building"):
        time.sleep(0.5)
    text = buf.getvalue()
    assert "\r... building" in text and "[00:00]" in text and "... building: done in " in text


# --------------------------------------------------------------------------------------------------
# JSON reports and errors


def test_json_report_has_schema_versions_and_output_hashes(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = run("to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(out), "--reference", "--json",
              "--no-validate")
    rep = json.loads(res.stdout)
    assert rep["schema_version"] == 1 and rep["command"] == "to-onnx"
    assert rep["versions"]["tvm"] and rep["versions"]["torch"] and rep["versions"]["bhvit-export"]
    assert rep["outputs"] == [{"path": str(out), "bytes": out.stat().st_size,
                               "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}]


def test_json_error_object_on_stdout(tmp_path: Path) -> None:
    res = run("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"), "-t", "nope", "--json")
    assert res.exit_code == 2
    obj = json.loads(res.stdout)
    assert obj["stage"] == "target" and obj["error"].startswith("--target nope") and obj["exit_code"] == 2
    assert res.stderr.splitlines()[-1] == f"error[{obj['stage']}]: " + obj["error"]


# --------------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("command", [[], ["to-onnx"], ["inspect"], ["compile"], ["verify"], ["emulate"], ["bench"], ["targets"]])
def test_every_help_has_examples(command: list[str]) -> None:
    res = run(*command, "--help")
    assert res.exit_code == 0 and "Examples:" in res.stdout and "later TVM" not in res.stdout


def test_envelope_hashes_every_file_of_a_bundle_folder(tmp_path: Path) -> None:
    from bhvit_export.report import envelope

    (tmp_path / "b" / "golden").mkdir(parents=True)
    (tmp_path / "b" / "model.so").write_bytes(b"lib")
    (tmp_path / "b" / "golden" / "x.npy").write_bytes(b"x")
    rep = envelope("compile", {"seconds": {}}, [tmp_path / "b"])
    assert [o["path"] for o in rep["outputs"]] == [str(tmp_path / "b" / "golden" / "x.npy"), str(tmp_path / "b" / "model.so")]
    assert rep["outputs"][1]["sha256"] == hashlib.sha256(b"lib").hexdigest() and rep["outputs"][1]["bytes"] == 3
