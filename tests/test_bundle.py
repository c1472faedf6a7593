"""compile -> bundle -> verify on this host, with the official micro fixture as the golden data.

The x86_64 bundle must pass against the *official* logits (the spec's end-to-end tolerance); a bundle
whose reference outputs were altered must fail with exit 1; a bundle whose library (or any file) was
altered, or that has an unlisted file, must be refused with exit 2 before the library is loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")

from bhvit_export.bundle import archive  # noqa: E402
from bhvit_export.bundle import manifest as mf  # noqa: E402
from bhvit_export.cli import cli  # noqa: E402


def _verify(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr without the ``... progress`` lines."""
    res = CliRunner().invoke(cli, ["verify", *args, "--no-torch"])
    err = "".join(line for line in res.stderr.splitlines(True) if not line.startswith("... "))
    return res.exit_code, res.stdout, err


@pytest.fixture
def bundle_copy(micro_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(micro_bundle, dst)
    return dst


def test_manifest_lists_every_file(micro_bundle: Path) -> None:
    m = mf.check_bundle(micro_bundle)
    assert set(m.files) >= {mf.LIBRARY, mf.GOLDEN_INPUTS, mf.GOLDEN_REFERENCE}
    assert m.target["arch"] == "x86_64" and m.batch == 1
    assert m.golden["source"] == "user" and m.golden["count"] == 4
    assert m.model["config"]["depths"] == [1, 1, 2, 1]


def test_verify_passes_against_official_logits(micro_bundle: Path) -> None:
    code, out, err = _verify(str(micro_bundle), "--runs", "2", "--warmup", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] is True
    assert report["cosine"] >= 0.9995 and report["top1_agreement"] == 1.0
    assert report["max_abs_over_std"] <= 0.05
    assert set(report["latency_ms"]) >= {"min", "median", "p90"} and report["latency_ms"]["runs"] == 2


def test_altered_reference_fails_with_exit_1(bundle_copy: Path) -> None:
    ref = np.load(bundle_copy / mf.GOLDEN_REFERENCE)
    np.save(bundle_copy / mf.GOLDEN_REFERENCE, ref[:, ::-1].copy())  # other classes win
    _rehash(bundle_copy)  # a consistent manifest: the numbers, not the hashes, must catch it
    code, out, err = _verify(str(bundle_copy), "--runs", "0")
    assert code == 1, (out, err)
    assert "FAIL" in out and "outside the tolerances" in err


def _rehash(root: Path) -> None:
    m = mf.read_manifest(root)
    m.files = mf.file_entries(root)
    (root / mf.MANIFEST).write_text(m.dumps())


def test_altered_library_is_refused_before_loading(bundle_copy: Path, monkeypatch) -> None:
    import tvm

    def boom(*_a, **_k):
        raise AssertionError("the library was loaded")

    monkeypatch.setattr(tvm.runtime, "load_module", boom)
    lib = bundle_copy / mf.LIBRARY
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    code, _, err = _verify(str(bundle_copy))
    assert code == 2
    assert "model.so was altered" in err and err.count("\n") == 1


@pytest.mark.parametrize("case", ["missing", "extra", "version", "traversal", "not-json", "no-manifest"])
def test_bad_bundles_exit_2(bundle_copy: Path, case: str) -> None:
    man = bundle_copy / mf.MANIFEST
    if case == "missing":
        (bundle_copy / mf.GOLDEN_INPUTS).unlink()
        says = "missing"
    elif case == "extra":
        (bundle_copy / "libevil.so").write_bytes(b"\x7fELF")
        says = "not listed"
    elif case == "version":
        obj = json.loads(man.read_text())
        obj["format_version"] = 99
        man.write_text(json.dumps(obj))
        says = "format version"
    elif case == "traversal":
        obj = json.loads(man.read_text())
        obj["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
        man.write_text(json.dumps(obj))
        says = "unsafe path"
    elif case == "not-json":
        man.write_text("{")
        says = "not valid JSON"
    else:
        man.unlink()
        says = "no manifest.json"
    code, _, err = _verify(str(bundle_copy), "--runs", "0")
    assert code == 2 and says in err and err.count("\n") == 1, err


def test_tar_bundle_verifies(micro_bundle: Path, tmp_path: Path) -> None:
    tar = tmp_path / "micro.tar"
    archive.pack(micro_bundle, tar)
    again = tmp_path / "again.tar"
    archive.pack(micro_bundle, again)
    assert tar.read_bytes() == again.read_bytes()  # deterministic archive
    code, out, err = _verify(str(tar), "--runs", "0")
    assert code == 0, err
    assert "PASS" in out


def test_tolerance_override_can_fail(micro_bundle: Path) -> None:
    # max |diff| 0: the compiled logits are close to the official ones, not bit-identical
    code, out, _ = _verify(str(micro_bundle), "--runs", "0", "--max-abs-over-std", "0")
    assert code == 1 and "max |diff|" in out


def test_foreign_arch_bundle_needs_rpc(bundle_copy: Path) -> None:
    obj = json.loads((bundle_copy / mf.MANIFEST).read_text())
    obj["target"]["arch"] = "aarch64"
    (bundle_copy / mf.MANIFEST).write_text(json.dumps(obj))
    code, _, err = _verify(str(bundle_copy), "--runs", "0")
    assert code == 2 and "--rpc" in err


def test_tar_bomb_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 1000)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "big.bin").write_bytes(b"\0" * 5000)
    tar = tmp_path / "bomb.tar"
    archive.pack(folder, tar)
    code, _, err = _verify(str(tar), "--runs", "0")
    assert code == 2 and "more than a bundle holds" in err


def test_recompiling_over_a_bundle_replaces_it(tmp_path: Path) -> None:
    from bhvit_export.atomic import atomic_path

    final = tmp_path / "bundle"
    for content in ("one", "two"):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "f").write_text(content)
    assert (final / "f").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp or aside folder left
