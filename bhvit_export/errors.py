"""One exception class per stage of the pipeline.

The CLI maps every :class:`BhvitError` to one line ``error[<stage>]: ...`` on stderr and an exit code (2 for bad input or
environment, 1 for a failed verification), so users never see a traceback for their own mistakes.
Messages say what was expected, what was found, and which option or package fixes it.
"""

from __future__ import annotations


class BhvitError(Exception):
    """Base class: a user-facing error with an exit code."""

    exit_code: int = 2
    stage: str = "bhvit-export"

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class CheckpointError(BhvitError):
    """The checkpoint file cannot be read safely, or is not a BHViT checkpoint."""

    stage = "checkpoint"


class UnsupportedVariantError(BhvitError):
    """The checkpoint is BHViT, but of a variant this tool does not export."""

    stage = "checkpoint"


class ConfigError(BhvitError):
    """A config.json that is unreadable or disagrees with the weights."""

    stage = "config"


class ExportError(BhvitError):
    """torch -> ONNX export failed or produced an invalid graph."""

    stage = "export"


class ModelFileError(BhvitError):
    """An ONNX file given to inspect/compile that is unreadable or not one of ours."""

    stage = "onnx"


class PassError(BhvitError):
    """A graph pass found a pattern it cannot rewrite exactly."""

    stage = "passes"


class TargetError(BhvitError):
    """Unknown target, or a missing toolchain (cross compiler, qemu, nvcc)."""

    stage = "target"


class CompileError(TargetError):
    """Lowering the model to TVM, building or linking it failed (or it has ops we cannot lower).

    A TargetError, so code that catches target problems around ``compile`` still catches it; its
    stage says which step failed.
    """

    stage = "compile"


class BundleError(BhvitError):
    """A bundle that is incomplete, altered, or made by another version."""

    stage = "bundle"


class VerificationFailed(BhvitError):
    """The compiled model disagrees with the reference beyond tolerance."""

    exit_code = 1
    stage = "verify"


class ExportValidationFailed(BhvitError):
    """The exported ONNX, run in onnxruntime, disagrees with PyTorch beyond tolerance (the file stays)."""

    exit_code = 1
    stage = "validate"
