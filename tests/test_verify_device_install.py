"""verify needs only numpy, click and the TVM runtime on a device: no torch, no onnx, no onnxruntime.

Run in a child process where importing those three fails (``sys.modules[name] = None``), as on a
board that installed the ``device`` extra; ``--profile`` returns per-function rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")

from bhvit_export.cli import cli  # noqa: E402
from tests.helpers import REPO  # noqa: E402

_CHILD = """
import sys
for name in ("torch", "onnx", "onnxruntime", "onnx_graphsurgeon"):
    sys.modules[name] = None  # any import of them now raises ImportError
from bhvit_export.cli import main
main(sys.argv[1:])
"""


def test_verify_runs_without_torch_or_onnx(micro_bundle: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "verify", str(micro_bundle), "--runs", "1", "--warmup", "0", "--json"],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and report["pytorch_latency_ms"] is None
    assert any("torch is not installed" in n for n in report["notes"])


def test_profile_lists_compiled_functions(micro_bundle: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), "--runs", "0", "--no-torch", "--profile", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)["profile"]
    assert rows and all(r["ms"] >= 0 and r["calls"] >= 1 for r in rows)
    assert any(r["name"].startswith("bhvit_bgemm") for r in rows)  # our packed kernels are in the model
