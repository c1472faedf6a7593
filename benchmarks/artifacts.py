"""Build (once) and cache what the benchmark times, for the paper's Tiny and Small sizes.

Latency does not depend on the weights' values, so the models are random-initialised (seeded) at the
paper's configurations with full-precision downsampling (the paper's dagger rows, what the official
code trains by default). TVM builds take tens of seconds each, so compiled libraries are cached in
``cache_dir`` under a key of the ONNX bytes, the batch, and the source of ``targets/`` (a schedule
change invalidates them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import onnx

from bhvit_export.config import PAPER_CONFIGS, BHViTConfig

Progress = Callable[[str], None]
MODELS = tuple(PAPER_CONFIGS)  # ("tiny", "small")


@dataclass
class ModelArtifacts:
    """One model size: the frozen PyTorch model and its two ONNX graphs."""

    name: str
    torch_model: Any
    reference: onnx.ModelProto
    fused: onnx.ModelProto


def make_model(name: str, seed: int = 0) -> Any:
    """The frozen PyTorch BHViT of a paper size with seeded random weights."""
    import torch

    from bhvit_export.model import BHViT

    if name not in PAPER_CONFIGS:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    cfg = BHViTConfig(depths=tuple(PAPER_CONFIGS[name]["depths"]), binary_downsample=False)
    model = BHViT(cfg)
    # Random BN statistics and shifts, so signs are not all equal (the work is the same either way).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.freeze()


def checkpoint_model(path: str) -> Any:
    """The frozen PyTorch BHViT of a user's checkpoint (``bench --checkpoint``), loaded safely."""
    from bhvit_export.checkpoint import load_checkpoint

    return load_checkpoint(path).model.freeze()


def label(name: str) -> str:
    """A paper size as is; a checkpoint by its file stem."""
    return name if name in PAPER_CONFIGS else Path(name).stem


_ARTIFACTS: dict[str, ModelArtifacts] = {}


def model_artifacts(name: str, say: Progress) -> ModelArtifacts:
    """Export the model's reference graph and fuse it (the two ONNX files the systems run).

    Once per model and process: the end-to-end run, the kernel table and the breakdown share it.
    """
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model

    if name not in _ARTIFACTS:
        say(f"{name}: building the PyTorch model and exporting ONNX")
        model = make_model(name) if name in PAPER_CONFIGS else checkpoint_model(name)
        ref = export_reference(model)
        _ARTIFACTS[name] = ModelArtifacts(label(name), model, ref, fuse_model(ref))
    return _ARTIFACTS[name]


def _targets_source_hash() -> str:
    root = Path(__file__).resolve().parent.parent / "targets"
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def tvm_library(
    model: onnx.ModelProto, batch: int, packed: bool, cache_dir: Path, say: Progress, label: str,
    target: Optional[Any] = None,
) -> Path:
    """Path of the compiled library of ``model`` at ``batch`` (built if not cached).

    ``target``: a TVM target or its dict (default: this host's CPU); a foreign architecture is linked with
    its cross compiler.
    """
    from bhvit_export.atomic import atomic_path
    from bhvit_export.targets.build import build
    from bhvit_export.targets.importer import import_fused
    from bhvit_export.targets.kernels.target_info import as_target, host_target, is_aarch64

    target = as_target(target) if target is not None else host_target()
    key = hashlib.sha256(
        model.SerializeToString(deterministic=True)
        + f"|{batch}|{packed}|{target}|{_targets_source_hash()}".encode()
    ).hexdigest()[:20]
    path = cache_dir / f"{label}-b{batch}-{key}.so"
    if path.is_file():
        return path
    say(f"{label}: compiling with TVM at batch {batch} (cached in {cache_dir})")
    ex = build(import_fused(model, batch=batch, target=target, packed=packed), target)
    with atomic_path(path) as tmp:
        if is_aarch64(target):
            from bhvit_export.targets.native_build import export_library

            export_library(ex, tmp.with_suffix(".so"), "aarch64")
        else:
            ex.export_library(str(tmp.with_suffix(".so")))
        tmp.with_suffix(".so").replace(tmp)
    return path


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("BHVIT_CACHE", Path.home() / ".cache" / "bhvit-export")) / "bench"


def ensure_dir(path: Optional[Path]) -> Path:
    p = path or default_cache_dir()
    p.mkdir(parents=True, exist_ok=True)
    return p
