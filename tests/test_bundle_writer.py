"""The bundle writer (``bhvit_export/bundle/writer.py``): a bundle appears whole or not at all.

No TVM here: ``fill`` writes stand-in files, so these run in milliseconds; the real compile goes
through the same writer in ``test_bundle.py``.
"""

from __future__ import annotations

import errno
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bhvit_export.bundle import manifest as mf
from bhvit_export.bundle.writer import write_bundle, write_golden
from bhvit_export.errors import BundleError


def _manifest() -> mf.Manifest:
    return mf.Manifest(tool_version="t", tvm_version="v", tvm_ffi_version="f", target={"arch": "x86_64", "device": "cpu"},
                       model={}, input={"shape": [1, 3, 8, 8]}, output={"shape": [1, 10]}, golden={})


def _fill(root: Path) -> mf.Manifest:
    (root / mf.LIBRARY).write_bytes(b"\x7fELF library")
    write_golden(root, np.zeros((2, 3, 8, 8), np.float32), np.ones((2, 10), np.float32))
    return _manifest()


def test_folder_bundle_lists_every_file_with_its_hash(tmp_path: Path) -> None:
    out = tmp_path / "b"
    m = write_bundle(out, _fill)
    assert sorted(m.files) == [mf.GOLDEN_INPUTS, mf.GOLDEN_REFERENCE, mf.LIBRARY]
    assert m.files[mf.LIBRARY]["sha256"] == mf.sha256_file(out / mf.LIBRARY)
    assert json.loads((out / mf.MANIFEST).read_text())["files"] == m.files
    assert np.load(out / mf.GOLDEN_REFERENCE, allow_pickle=False).shape == (2, 10)
    assert oct(os.stat(out).st_mode & 0o777) == "0o755" and oct(os.stat(out / mf.LIBRARY).st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary left beside it


def test_tar_bundle_holds_the_same_files(tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    m = write_bundle(out, _fill)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {mf.MANIFEST, *m.files} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar"]


@pytest.mark.parametrize("name", ["b", "b.tar"])
def test_a_failing_fill_leaves_nothing(tmp_path: Path, name: str) -> None:
    def fill(root: Path) -> mf.Manifest:
        _fill(root)
        raise RuntimeError("the linker failed")

    with pytest.raises(RuntimeError, match="the linker failed"):
        write_bundle(tmp_path / name, fill)
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_is_one_bundle_error(tmp_path: Path) -> None:
    def fill(root: Path) -> mf.Manifest:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(BundleError, match=r"cannot write .*/b: .*No space left on device"):
        write_bundle(tmp_path / "b", fill)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_bundle_is_replaced_only_when_allowed(tmp_path: Path) -> None:
    out = tmp_path / "b"
    write_bundle(out, _fill)

    def refuse(path: Path) -> None:
        raise BundleError(f"{path} is not ours")

    with pytest.raises(BundleError, match="is not ours"):
        write_bundle(out, _fill, may_replace=refuse)
    assert (out / mf.MANIFEST).is_file()
