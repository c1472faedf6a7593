"""Checkpoint -> ONNX file: the one library call behind ``bhvit-export to-onnx``.

Kept apart from :mod:`.reference` (how to trace the model) so that the steps a user waits for --
load, export, fuse, write -- are timed and reported in one place, and the CLI only prints the report.
The output is written atomically and is byte-for-byte reproducible: later stages (compile, bundle
hashes) key on the file's bytes, so the same checkpoint must always give the same file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ExportError

if TYPE_CHECKING:
    import onnx

    from ..config import BHViTConfig
    from ..validate import Validation

Progress = Callable[[str], None]
#: Fields that torch fills from the environment; pinned so the bytes depend on the weights only.
PRODUCER_NAME = "bhvit-export"
#: ONNX LayerNormalization (the attention's token norm) exists from opset 17 on.
MIN_OPSET = 17


@dataclass
class ConvertReport:
    """What ``convert_checkpoint`` did, for humans (``lines``) and machines (``to_json``)."""

    checkpoint: str
    output: str
    kind: str  # "reference" (float graph) or "fused" (bhvit ops)
    entry: str
    inferred: str  # LoadedCheckpoint.summary
    config: "BHViTConfig"
    opset: int
    checkpoint_bytes: int
    output_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # load, export, golden, sensitivity, fuse, write, validate, total
    validation: "Validation | None" = None  # None with validate=False
    sensitivity: dict[str, Any] | None = None  # the reference's own logit change (bhvit.sensitivity)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "output": self.output,
            "kind": self.kind,
            "entry": self.entry,
            "inferred": self.inferred,
            "config": self.config.to_json(),
            "paper_name": self.config.paper_name(),
            "opset": self.opset,
            "checkpoint_bytes": self.checkpoint_bytes,
            "output_bytes": self.output_bytes,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "validation": self.validation.to_json() if self.validation else None,
            "sensitivity": self.sensitivity,
        }

    def lines(self) -> list[str]:
        s = self.seconds
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k != "total")
        out = [
            f"inferred: {self.inferred}",
            f"exported {self.kind} ONNX (opset {self.opset}) in {s.get('total', 0.0):.1f} s ({steps})",
            f"wrote {self.output} ({_human(self.output_bytes)}; checkpoint {_human(self.checkpoint_bytes)})",
        ] + ([self.validation.line()] if self.validation else ["not validated (--no-validate)"])
        if self.sensitivity is not None:
            worst = self.sensitivity["worst_max_abs_over_std"]
            out.append(
                f"reference sensitivity: a 1e-6 relative input change moves the logits by up to {worst:.2%} of "
                f"their std ({'within' if worst * 2 <= 0.05 else 'BEYOND'} the 5% end-to-end tolerance, with 2x headroom)"
            )
        return out


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _fuser() -> tuple[Callable[["onnx.ModelProto"], "onnx.ModelProto"], int | None]:
    """Import ``bhvit_export.passes.pipeline.fuse_model`` (and the opset it requires) only for a fused export.

    Looked up before the (slow) checkpoint load so that a build without the passes fails at once.
    """
    import importlib

    try:
        pipeline = importlib.import_module("bhvit_export.passes.pipeline")
        fuse_model = pipeline.fuse_model
    except (ImportError, AttributeError) as e:
        name = getattr(e, "name", None)
        if isinstance(e, AttributeError) or name in (None, "passes", "bhvit_export.passes.pipeline"):
            raise ExportError(
                "the fused export is unavailable in this build (bhvit_export.passes.pipeline.fuse_model not found); "
                "use --reference for the float reference graph"
            ) from None
        raise ExportError(
            f"the fused export needs the Python package '{name}', which is not installed "
            "(pip install -e . installs it)"
        ) from None
    required = getattr(pipeline, "ONNX_OPSET", None)
    return fuse_model, int(required) if required is not None else None


def _chmod_like_open(path: Path) -> None:
    """Give the file the mode a plain ``open()`` would (the temp file of atomic_path is 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _pin_metadata(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """Make the file depend only on the weights: no torch version, no timestamps or paths."""
    from .. import __version__

    proto.producer_name = PRODUCER_NAME
    proto.producer_version = __version__
    return proto


def _check_paths(ckpt: Path, out: Path, config_json: str | os.PathLike[str] | None) -> None:
    """``-o`` and the inputs, before anything slow: not a folder, not the checkpoint itself, a
    checkpoint (not an .onnx or a bundle), and a writable place that is not an input."""
    if out.is_dir():
        raise ExportError(f"-o {out} is a directory; give the path of the .onnx file to write")
    if ckpt.exists() and out.exists() and os.path.samefile(ckpt, out):
        raise ExportError(f"-o {out} is the checkpoint itself; refusing to overwrite the input")
    from ..file_kinds import expect_checkpoint
    from ..output_target import check_output

    expect_checkpoint(ckpt)  # an .onnx or a bundle given by mistake: say which command takes it
    # before loading: a device file, a FIFO, a path under a file, a read-only folder, the --config file
    check_output(out, folder=False, error=ExportError, inputs=[ckpt] + ([Path(config_json)] if config_json else []))


def _pick_opset(opset: int | None, required: int | None) -> int:
    """``--opset``, or the passes' (fused) or the reference exporter's; an ExportError if it cannot work."""
    from .reference import OPSET

    if opset is None:  # the fused graph's passes pin the opset they were written for
        opset = required or OPSET
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: the graph needs opset {MIN_OPSET} or newer (LayerNormalization)")
    if required is not None and opset != required:
        raise ExportError(f"--opset {opset}: the fused graph is built for opset {required}; omit --opset or use {required}")
    return opset


def _add_reference(proto: "onnx.ModelProto", model: Any, say: Progress, times: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """Run the PyTorch model on the golden inputs and measure its sensitivity; both go into the
    metadata (``compile`` and ``verify`` read them). Returns (golden, sensitivity)."""
    from ..golden import DEFAULT_COUNT, DEFAULT_SEED, METADATA_KEY, pytorch_golden
    from ..sensitivity import METADATA_KEY as SENSITIVITY_KEY
    from ..sensitivity import measure_sensitivity
    from ..sensitivity import to_metadata as sensitivity_metadata

    t = time.perf_counter()
    say(f"running the PyTorch model on {DEFAULT_COUNT} golden inputs (kept as the reference for verify)")
    golden = pytorch_golden(model)
    proto.metadata_props.add(key=METADATA_KEY, value=golden.to_metadata(DEFAULT_SEED))
    times["golden"] = time.perf_counter() - t

    t = time.perf_counter()
    say("measuring the reference's sensitivity to a 1e-6 input perturbation")
    sensitivity = measure_sensitivity(model, golden.inputs)
    proto.metadata_props.add(key=SENSITIVITY_KEY, value=sensitivity_metadata(sensitivity))
    times["sensitivity"] = time.perf_counter() - t
    return golden, sensitivity


def _write(proto: "onnx.ModelProto", out: Path) -> int:
    """Write the file atomically with pinned metadata and the mode ``open()`` gives; its size."""
    from .reference import save_model

    proto = _pin_metadata(proto)
    try:
        size = save_model(proto, out)
        _chmod_like_open(out)
    except OSError as e:  # e.g. the disk filled up during the export: the OS's reason, nothing left
        from ..output_target import os_reason

        raise ExportError(f"cannot write {out}: {os_reason(e)}") from None
    return size


def _validate(out: Path, golden: Any, say: Progress) -> "Validation":
    """onnxruntime on the written file vs the PyTorch logits; a graph it cannot run is a failed validation."""
    from ..golden import DEFAULT_COUNT
    from ..progress import long_step
    from ..validate import validate_export

    with long_step(say, f"validating {out.name} in onnxruntime against PyTorch on the {DEFAULT_COUNT} golden inputs"):
        try:
            return validate_export(out, golden)
        except ImportError:
            raise
        except Exception as e:  # onnxruntime refused or failed to run the graph: that is the finding
            from ..errors import ExportValidationFailed

            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ExportValidationFailed(
                f"onnxruntime cannot run the exported graph ({type(e).__name__}: {first}); the file stays for inspection: {out}"
            ) from None


def convert_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    reference: bool,
    entry: str = "auto",
    config_json: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    validate: bool = True,
    progress: Progress | None = None,
) -> ConvertReport:
    """Load ``ckpt_path``, export it to ONNX (the float reference, or fused) and write ``out_path``.

    ``opset=None`` picks the reference exporter's opset, or for a fused export the one the passes
    require (they match ops by their opset's signatures).

    Nothing is written unless every step succeeds (temp name + rename), so a failed or interrupted
    run never leaves a file that a later ``compile`` would trust.

    ``validate`` runs the written graph in onnxruntime on the golden inputs against the PyTorch
    logits (:mod:`bhvit_export.validate`); the result is in the report, and the caller decides what a
    failure means (the CLI exits 1 and keeps the file).
    """
    say = progress or (lambda _msg: None)
    ckpt, out = Path(ckpt_path), Path(out_path)
    _check_paths(ckpt, out, config_json)
    fuse, required = (None, None) if reference else _fuser()

    from ..checkpoint import load_checkpoint
    from ..config import check_config_json
    from ..progress import long_step
    from .reference import export_reference

    opset = _pick_opset(opset, required)
    times: dict[str, float] = {}
    t_all = t = time.perf_counter()
    say(f"loading {ckpt}")
    loaded = load_checkpoint(ckpt, entry=entry, config_json=config_json)
    if config_json is not None:
        check_config_json(config_json, loaded.config)
    times["load"] = time.perf_counter() - t

    t = time.perf_counter()
    with long_step(say, "exporting the float reference graph"):
        proto = export_reference(loaded.model, opset=opset)
    times["export"] = time.perf_counter() - t
    golden, sensitivity = _add_reference(proto, loaded.model, say, times)
    if fuse is not None:
        t = time.perf_counter()
        with long_step(say, "fusing binary ops"):
            proto = fuse(proto)
        times["fuse"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"writing {out}")
    size = _write(proto, out)
    times["write"] = time.perf_counter() - t
    validation = None
    if validate:
        t = time.perf_counter()
        validation = _validate(out, golden, say)
        times["validate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all
    return ConvertReport(
        checkpoint=str(ckpt),
        output=str(out),
        kind="reference" if reference else "fused",
        entry=loaded.entry,
        inferred=loaded.summary,
        config=loaded.config,
        opset=opset,
        checkpoint_bytes=ckpt.stat().st_size,
        output_bytes=size,
        seconds=times,
        validation=validation,
        sensitivity=sensitivity,
    )


__all__ = ["ConvertReport", "convert_checkpoint"]
