"""Issue #16 point 9: another batch size than the compiled one is a clear error naming the compiled batch,
from Python (:class:`BundleModel`) and from the native runner; ``run_batches`` runs any count."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bhvit_export.bundle import manifest as mf
from bhvit_export.bundle.load import BundleModel, compiled_shape_in_error
from bhvit_export.errors import BundleError

RAW = ("Check failed: input_shape[i] == reg (2 vs. 1) : ErrorContext(fn=main, loc=param[0], param=pixel_values, "
       'annotation=R.Tensor((1, 3, 224, 224), dtype="float32"))  match_cast error,  shape[0] mismatch to specified constant.')


def test_compiled_shape_is_read_from_tvms_error() -> None:
    assert compiled_shape_in_error(RAW) == [1, 3, 224, 224]
    assert compiled_shape_in_error("some other error") is None


def test_bundle_model_names_the_compiled_batch(micro_bundle: Path) -> None:
    model = BundleModel(micro_bundle)
    x = np.load(micro_bundle / mf.GOLDEN_INPUTS)
    ref = np.load(micro_bundle / mf.GOLDEN_REFERENCE)
    with pytest.raises(BundleError, match=r"compiled for input \[1, 3, 224, 224\] \(batch 1\), got \[2, 3, 224, 224\]"):
        model(x[:2])
    got = model.run_batches(x[:3])  # any count: one compiled batch at a time
    assert got.shape == (3, ref.shape[1])
    np.testing.assert_allclose(got[:1], model(x[:1]), rtol=0, atol=0)
    assert (got.argmax(1) == ref[:3].argmax(1)).all()


def test_native_runner_names_the_compiled_batch(micro_bundle: Path, tmp_path: Path) -> None:
    runner = micro_bundle / mf.RUNTIME_DIR / "bhvit-run"
    if not runner.is_file():
        pytest.skip("the bundle has no native runner here")
    proc = subprocess.run([str(runner), str(micro_bundle / mf.LIBRARY), str(micro_bundle / mf.GOLDEN_INPUTS),
                           str(tmp_path / "y.npy"), "--batch", "2", "--runs", "0"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "compiled for input [1, 3, 224, 224] (batch 1), got [2, 3, 224, 224]: pass --batch 1" in proc.stderr
