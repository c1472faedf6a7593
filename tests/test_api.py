"""The public Python API (``bhvit_export/api.py``): ``from bhvit_export import export, compile, verify``.

* importing it loads no torch, onnx or TVM (``--help`` stays instant);
* each function takes exactly the options of its command, under the same defaults (a new CLI option
  without its API twin fails here), and passes them on;
* on the micro fixture: ``export`` writes the ONNX and returns the command's report, ``verify``
  returns the report with the verdict (a failed comparison does not raise), bad input raises the
  same typed error the CLI prints.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from bhvit_export import compile, export, verify
from bhvit_export.cli import cli
from bhvit_export.errors import BundleError, TargetError
from tests.helpers import REPO, official_path

#: CLI parameter name -> API keyword (flags that invert: ``no_native`` -> ``native``, ``no_torch`` -> ``torch``).
RENAMED = {
    "to-onnx": {"ckpt": "checkpoint", "out": "output", "config_json": "config", "no_validate": "validate"},
    "compile": {"out": "output", "no_native": "native"},
    "verify": {"no_torch": "torch", "images_limit": "limit"},
}
API = {"to-onnx": export, "compile": compile, "verify": verify}


def test_import_is_light() -> None:
    code = (
        "import sys; from bhvit_export import export, compile, verify; "
        "print(sorted(m for m in ('torch', 'onnx', 'tvm', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", sorted(API))
def test_functions_mirror_the_commands(command: str) -> None:
    params = inspect.signature(API[command]).parameters
    want = {}
    for p in cli.commands[command].params:
        if p.name == "as_json":
            continue
        name = RENAMED[command].get(p.name, p.name)
        default = p.default
        if "UNSET" in repr(default):  # click 8.2 marks "no default" with a sentinel: False for a flag
            default = False if getattr(p, "is_flag", False) else None
        want[name] = (not default) if p.name.startswith("no_") else default
    assert set(params) - {"progress"} == set(want)
    for name, default in want.items():
        if params[name].default is not inspect.Parameter.empty:
            assert params[name].default == default, name


def test_compile_passes_every_option_on(monkeypatch, tmp_path: Path) -> None:
    import bhvit_export.compile as compile_module

    seen = {}
    monkeypatch.setattr(compile_module, "compile_model", lambda *a, **k: seen.update(args=a, **k) or "report")
    got = compile("m.onnx", tmp_path / "b", target="aarch64", mcpu="cortex-a76", batch=2,
                  golden_inputs="x.npy", golden_outputs="y.npy", native=False)
    assert got == "report" and seen["args"] == ("m.onnx", tmp_path / "b")
    assert (seen["target"], seen["mcpu"], seen["batch"], seen["native"]) == ("aarch64", "cortex-a76", 2, False)
    assert (seen["golden_inputs"], seen["golden_outputs"]) == (Path("x.npy"), Path("y.npy"))


def test_errors_are_the_typed_ones(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    with pytest.raises(TargetError, match="unknown target"):
        compile(tmp_path / "m.onnx", tmp_path / "b", target="nope")
    with pytest.raises(BundleError, match="choose one of"):
        verify(tmp_path, rpc="h:1", native=True)
    with pytest.raises(BundleError, match="no such bundle"):
        verify(tmp_path / "missing")


def test_export_writes_the_onnx_and_returns_the_report(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    lines: list[str] = []
    out = tmp_path / "micro-ref.onnx"
    report = export(official_path("micro") / "checkpoint.pth", out, reference=True, progress=lines.append)
    assert out.is_file() and lines
    assert report.to_json()["output"] == str(out)


def test_verify_returns_the_report(micro_bundle: Path) -> None:
    report = verify(micro_bundle, runs=1, warmup=0, torch=False)
    assert report.passed and report.to_json()["cosine"] >= 0.9995
    failed = verify(micro_bundle, runs=0, torch=False, max_abs_over_std=0.0)  # the CLI's exit 1: a report, no raise
    assert not failed.passed and "max |diff|" in " ".join(failed.devices[0].failures)
