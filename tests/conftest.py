"""Shared fixtures: the official BHViT fixtures (``../shared/fixtures/official`` beside the repo),
loaded once per session because loading and exporting are the slow parts of the suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from tests.helpers import OFFICIAL_NAMES, official_path


@pytest.fixture(autouse=True, scope="session")
def strict_schedules() -> Any:
    """Schedule rules raise instead of logging (``targets/schedules/rule_failure.py``), here and in
    the CLI subprocesses the tests start."""
    import os

    from bhvit_export.targets.schedules.rule_failure import STRICT_ENV

    old = os.environ.get(STRICT_ENV)
    os.environ[STRICT_ENV] = "1"
    yield
    if old is None:
        os.environ.pop(STRICT_ENV, None)
    else:
        os.environ[STRICT_ENV] = old


@pytest.fixture(params=OFFICIAL_NAMES)
def official(request: pytest.FixtureRequest) -> Path:
    """Each official fixture folder in turn (checkpoint.pth, inputs.npy, logits.npy, ...)."""
    return official_path(request.param)


@pytest.fixture
def micro() -> Path:
    return official_path("micro")


@pytest.fixture(scope="session")
def loaded_official() -> Callable[[str], Any]:
    """``name -> LoadedCheckpoint`` with a frozen (eval, binarized) model, loaded once."""
    from bhvit_export.checkpoint import load_checkpoint

    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            folder = official_path(name)
            loaded = load_checkpoint(folder / "checkpoint.pth", config_json=folder / "config.json")
            loaded.model.freeze()
            cache[name] = loaded
        return cache[name]

    return get


def _exported_onnx(tmp_path_factory: pytest.TempPathFactory, *, reference: bool) -> Callable[[str], Path]:
    """``name -> path`` of an official fixture exported by ``to-onnx`` (once per name)."""
    from bhvit_export.export.convert import convert_checkpoint

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp("reference" if reference else "fused") / f"{name}.onnx"
            folder = official_path(name)
            convert_checkpoint(folder / "checkpoint.pth", out, reference=reference, config_json=folder / "config.json")
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``name -> path`` of the float reference ONNX of an official fixture, exported once."""
    return _exported_onnx(tmp_path_factory, reference=True)


@pytest.fixture(scope="session")
def micro_checkpoint() -> dict[str, Any]:
    """The micro checkpoint as a dict (safe load), for tests that write damaged variants of it."""
    import argparse

    import torch

    path = official_path("micro") / "checkpoint.pth"
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def fused_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``name -> path`` of the fused ONNX of an official fixture (with its golden metadata), exported once."""
    return _exported_onnx(tmp_path_factory, reference=False)


def _micro_bundle(tmp_path_factory: pytest.TempPathFactory, onnx_path: Path, target: str) -> Path:
    """The micro fixture compiled for ``target``, golden = the official inputs and logits."""
    from bhvit_export.compile import compile_model

    src = official_path("micro")
    out = tmp_path_factory.mktemp("bundles") / f"micro-{target}"
    compile_model(onnx_path, out, target=target, golden_inputs=src / "inputs.npy", golden_outputs=src / "logits.npy")
    return out


@pytest.fixture(scope="session")
def micro_bundle(tmp_path_factory: pytest.TempPathFactory, fused_onnx: Callable[[str], Path]) -> Path:
    """The micro fixture compiled for this host (x86_64), golden = the official inputs and logits.

    Read-only for tests: copy it (``shutil.copytree``) before altering anything.
    """
    pytest.importorskip("tvm")
    return _micro_bundle(tmp_path_factory, fused_onnx("micro"), "x86_64")


@pytest.fixture(scope="session")
def micro_bundle_aarch64(tmp_path_factory: pytest.TempPathFactory, fused_onnx: Callable[[str], Path]) -> Path:
    """The micro fixture compiled for aarch64 (Cortex-A72) with the native runner; golden = official.

    Skips (with the install hint) where the cross compiler or the aarch64 runtime is missing.
    """
    pytest.importorskip("tvm")
    from bhvit_export.errors import TargetError
    from bhvit_export.targets.runtime_libs import runtime_libs
    from bhvit_export.targets.toolchain import require

    try:
        require("aarch64-g++")
        runtime_libs("aarch64")
    except TargetError as e:
        pytest.skip(str(e))
    return _micro_bundle(tmp_path_factory, fused_onnx("micro"), "aarch64")
