"""Reliability sweep (issue #7): what ``verify`` says about bad golden data, NaN, versions and images.

The rule the cases pin down: anything wrong with the *bundle* (golden files of the wrong shape or
dtype, NaN in the golden inputs or reference) is a bad bundle, exit 2, decided before the library is
loaded; NaN coming out of the *compiled model* is a failed verification, exit 1. Every bundle here
has a consistent manifest (rehashed), so the checks after the SHA-256 ones are what is tested.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import is_error_line
from click.testing import CliRunner

pytest.importorskip("tvm")

from bhvit_export.bundle import manifest as mf  # noqa: E402
from bhvit_export.cli import cli  # noqa: E402


def verify(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the stderr lines that are not ``... progress``."""
    res = CliRunner().invoke(cli, ["verify", *args, "--no-torch", "--runs", "0"])
    return res.exit_code, res.stdout, [ln for ln in res.stderr.splitlines() if not ln.startswith("... ")]


def one_error(code: int, err: list[str], needle: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert len(err) == 1 and is_error_line(err[0]) and needle in err[0], err


def rehash(root: Path) -> None:
    """Make the manifest consistent with the files again (a careful forger would)."""
    m = mf.read_manifest(root)
    m.files = mf.file_entries(root)
    (root / mf.MANIFEST).write_text(m.dumps())


@pytest.fixture
def bundle(micro_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(micro_bundle, dst)
    return dst


@pytest.fixture
def no_library_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the bundle's library is opened (the checks must come first)."""
    import tvm

    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the library was loaded")

    monkeypatch.setattr(tvm.runtime, "load_module", boom)


# --------------------------------------------------------------------------------------------------
# golden files that do not fit the manifest, or hold NaN: a bad bundle, exit 2


def _lying_header(path: Path) -> None:
    """A .npy whose header claims 4e12 floats but holds 64 bytes: must not be allocated."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 3, 1000, 1000), }"
    header += b" " * (118 - len(header)) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)


GOLDEN_CASES = {
    # case: (file, how to alter the array (or None: special), what the error says)
    "inputs-wrong-shape": (mf.GOLDEN_INPUTS, lambda a: a[:, :, :112, :112].copy(), "do not match the input spec"),
    "inputs-wrong-dtype": (mf.GOLDEN_INPUTS, lambda a: a.astype(np.float64), "do not match the input spec"),
    "inputs-wrong-count": (mf.GOLDEN_INPUTS, lambda a: a[:3].copy(), "do not match the input spec"),
    "inputs-nan": (mf.GOLDEN_INPUTS, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a).astype(np.float32),
                   "golden inputs contain NaN or Inf"),
    "inputs-lying-header": (mf.GOLDEN_INPUTS, None, "golden files unreadable"),
    "inputs-pickled-object": (mf.GOLDEN_INPUTS, None, "golden files unreadable"),
    "reference-wrong-classes": (mf.GOLDEN_REFERENCE, lambda a: a[:, :7].copy(), "does not match the output spec"),
    "reference-wrong-dtype": (mf.GOLDEN_REFERENCE, lambda a: a.astype(np.float16), "does not match the output spec"),
    "reference-inf": (mf.GOLDEN_REFERENCE, lambda a: np.where(a == a.max(), np.inf, a).astype(np.float32),
                      "golden reference contain NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_bad_golden_files_are_a_bad_bundle(case: str, bundle: Path, no_library_load: None) -> None:
    rel, alter, says = GOLDEN_CASES[case]
    path = bundle / rel
    if case == "inputs-lying-header":
        _lying_header(path)
    elif case == "inputs-pickled-object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, alter(np.load(path)))
    rehash(bundle)
    code, _, err = verify(str(bundle))
    one_error(code, err, says)


def test_nan_in_compiled_outputs_is_a_failed_verification(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bhvit_export.verify import runners

    real = runners.LocalRunner.run

    def nan_run(self: Any, inputs: np.ndarray) -> np.ndarray:
        out = real(self, inputs)
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(runners.LocalRunner, "run", nan_run)
    code, out, err = verify(str(bundle))
    one_error(code, err, "outside the tolerances", exit_code=1)
    assert "failed: the outputs contain NaN or Inf" in out and "FAILED" in out


# --------------------------------------------------------------------------------------------------
# a bundle made by another version: reported, and verification still runs


def test_other_tool_and_tvm_versions_are_reported(bundle: Path) -> None:
    man = bundle / mf.MANIFEST
    obj = json.loads(man.read_text())
    obj["tool"]["version"] = "0.0.1"
    obj["tvm"]["version"] = "0.26.0"
    obj["tvm"]["ffi_version"] = "0.1.0"
    man.write_text(json.dumps(obj))  # the manifest is not in its own list: no rehash needed
    res = CliRunner().invoke(cli, ["verify", str(bundle), "--no-torch", "--runs", "0", "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] is True and report["cosine"] >= 0.9995  # it did run
    notes = " | ".join(report["notes"])
    assert "bhvit-export: bundle built with 0.0.1" in notes
    assert "TVM: bundle built with 0.26.0" in notes and "tvm-ffi: bundle built with 0.1.0" in notes
    text = CliRunner().invoke(cli, ["verify", str(bundle), "--no-torch", "--runs", "0"])
    assert text.exit_code == 0 and "note: TVM: bundle built with 0.26.0, this machine has" in text.stdout


# --------------------------------------------------------------------------------------------------
# --images: unreadable, non-image and hostile files


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels and that holds no pixel data (a decompression bomb's
    first bytes: Pillow must refuse it at open, before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for c in "abcdefghij":  # the micro model's 10 classes (verify refuses another class count)
        (root / c).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 200, 30)).save(root / c / "ok.png")
    return root


IMAGE_CASES = ["text-as-jpg", "truncated-png", "decompression-bomb", "no-class-folders", "no-images", "not-a-folder"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_images_are_one_line_exit_2(case: str, micro_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("PIL.Image")
    root = _image_folder(tmp_path / "imgs")
    if case == "text-as-jpg":
        (root / "a" / "zz.jpg").write_text("this is not a jpeg")
        says = "cannot read"
    elif case == "truncated-png":
        data = (root / "a" / "ok.png").read_bytes()
        (root / "b" / "zz.png").write_bytes(data[: len(data) // 2])
        says = "cannot read"
    elif case == "decompression-bomb":
        _png_header_only(root / "b" / "zz.png", 60000, 60000)
        says = "DecompressionBombError"
    elif case == "no-class-folders":
        shutil.rmtree(root)
        root.mkdir()
        (root / "loose.png").write_bytes(b"")
        says = "no class folders"
    elif case == "no-images":
        for p in root.rglob("*.png"):
            p.rename(p.with_suffix(".txt"))
        says = "no image files"
    else:  # refused by the option's type (a click usage error: exit 2, its own wording)
        root = tmp_path / "file.png"
        root.write_bytes(b"")
        code, _, err = verify(str(micro_bundle), "--images", str(root))
        assert code == 2 and "is a file" in err[-1] and "Traceback" not in "".join(err), err
        return
    code, _, err = verify(str(micro_bundle), "--images", str(root))
    one_error(code, err, says)
