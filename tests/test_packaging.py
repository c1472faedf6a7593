"""The installed shape: one distribution name (``bhvit_export``), imports that go one way, a wheel that works.

``passes/``, ``targets/`` and ``benchmarks/`` stay beside ``bhvit_export/`` in the source tree and
install as ``bhvit_export.passes`` etc. (setuptools' package-dir, pyproject.toml). These tests check
what an editable install cannot show: the package list is complete, the import contracts hold on the
installed layout, fusing needs no torch, and a non-editable wheel runs micro end to end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import official_path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _source_dir(package: str) -> Path:
    """The folder a package is read from, by the longest package-dir prefix (as setuptools does)."""
    mapping: dict[str, str] = SETUPTOOLS["package-dir"]
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in mapping:
            return REPO / mapping[prefix] / Path(*parts[n:])
    return REPO / Path(*parts)


def _installed_layout(root: Path) -> Path:
    """Copy the tree as a wheel lays it out (``root/bhvit_export/{passes,targets,benchmarks}``)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in SETUPTOOLS["packages"]:
        src = _source_dir(package)
        dst = root / Path(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix == ".py":
                shutil.copy2(f, dst / f.name)
    shutil.copytree(REPO / "targets" / "native", root / "bhvit_export" / "targets" / "native", ignore=ignore)
    return root


def _lint_imports(layout: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(layout)}
    return subprocess.run([str(script), str(REPO / "pyproject.toml")], cwd=layout, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_package_folder_is_listed() -> None:
    """A new package folder that pyproject.toml does not list would be missing from the wheel."""
    listed = {_source_dir(p).resolve() for p in SETUPTOOLS["packages"]}
    found = {
        init.parent.resolve()
        for top in ("bhvit_export", "passes", "targets", "benchmarks")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found == listed, f"unlisted: {sorted(map(str, found - listed))}; listed but missing: {sorted(map(str, listed - found))}"
    assert all(p == "bhvit_export" or p.startswith("bhvit_export.") for p in SETUPTOOLS["packages"])


def test_import_contracts_hold(tmp_path: Path) -> None:
    res = _lint_imports(_installed_layout(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    "module, source",
    [
        ("bhvit_export/passes/_leak.py", "import torch\n"),  # the passes would need torch
        ("bhvit_export/targets/_leak.py", "from bhvit_export.export.reference import finalize\n"),
        ("bhvit_export/passes/_upward.py", "from bhvit_export.targets import build\n"),  # passes <- targets
    ],
)
def test_import_contracts_catch_a_violation(tmp_path: Path, module: str, source: str) -> None:
    layout = _installed_layout(tmp_path)
    (layout / module).write_text(source)
    res = _lint_imports(layout)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-2000:]


def test_fusing_needs_no_torch(tmp_path: Path, reference_onnx) -> None:
    """``fuse_model`` with torch, tvm and onnxruntime made unimportable gives the same bytes."""
    import onnx

    from bhvit_export.passes.pipeline import fuse_model

    ref = reference_onnx("micro")
    expected = fuse_model(onnx.load(ref)).SerializeToString(deterministic=True)
    out = tmp_path / "fused.onnx"
    code = (
        "import sys\n"
        "for m in ('torch', 'tvm', 'tvm_ffi', 'onnxruntime'): sys.modules[m] = None\n"
        "import onnx\n"
        "from bhvit_export.passes.pipeline import fuse_model\n"
        f"data = fuse_model(onnx.load({str(ref)!r})).SerializeToString(deterministic=True)\n"
        f"open({str(out)!r}, 'wb').write(data)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes() == expected


def _venv_with_wheel(tmp_path: Path) -> Path:
    """A fresh venv with our wheel installed non-editable; its dependencies are borrowed from this one.

    The dependencies (torch, TVM, onnx...) come through a ``.pth`` naming this interpreter's
    site-packages: installing them again would take minutes and need the network. A ``.pth`` path line
    does not run that folder's own ``.pth`` files, so this environment's editable finder stays off.
    """
    dist = tmp_path / "dist"
    # Built from a copy: setuptools' build/ folder in the checkout would keep modules since deleted.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "out", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        check=True, capture_output=True, timeout=600,
    )
    (wheel,) = dist.glob("bhvit_export-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv


def test_wheel_installs_and_runs_micro_end_to_end(tmp_path: Path) -> None:
    """Wheel -> fresh venv -> to-onnx -> compile -> verify on micro, run from outside the source tree."""
    micro = official_path("micro")
    venv = _venv_with_wheel(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=900)

    py = str(venv / "bin" / "python")
    probe = run(py, "-c", (
        "import importlib.util, bhvit_export, bhvit_export.targets.native_build as nb\n"
        "print(bhvit_export.__file__)\n"
        "print(sorted(n for n in ('passes', 'targets', 'benchmarks') if importlib.util.find_spec(n)))\n"
        "print(sorted(p.name for p in nb.NATIVE_DIR.iterdir()))\n"
    ))
    assert probe.returncode == 0, probe.stderr[-2000:]
    location, top_level, native = probe.stdout.splitlines()
    assert location.startswith(str(venv)), location  # the wheel's copy, not the source tree
    assert top_level == "[]"  # nothing installed under a generic top-level name
    assert "runner.cc" in native and "tb_count.c" in native

    cli = str(venv / "bin" / "bhvit-export")
    res = run(cli, "to-onnx", str(micro / "checkpoint.pth"), "-o", "micro.onnx")
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(cli, "compile", "micro.onnx", "--target", "x86_64", "-o", "bundle")
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(cli, "verify", "bundle", "--runs", "3", "--warmup", "1", "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    import json

    report = json.loads(res.stdout)
    assert report["passed"] is True
    assert np.isfinite(report["cosine"]) and report["cosine"] > 0.9995
    assert report["top1_agreement"] == 1.0
