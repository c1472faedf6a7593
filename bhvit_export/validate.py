"""Export-time validation, as optimum does it: run the written ONNX in onnxruntime against PyTorch.

``to-onnx`` already runs the PyTorch model on the golden inputs (their logits travel in the ONNX
metadata for ``verify``); here the exported graph -- reference or fused, the ``bhvit`` ops run through
their ONNX function bodies -- runs in onnxruntime on the same inputs, one image at a time as the
reference was computed, and is compared with the spec's end-to-end tolerance. A graph outside it is a
failed export (exit 1), but the file stays: it is what a user needs to investigate.

onnxruntime's graph optimizations change the numbers: at its default, ``ORT_ENABLE_ALL``, it fuses
the float MatMul/Add/LayerNorm chains into kernels that sum in another order than the unfused ops at
``ORT_DISABLE_ALL``, and a binary network amplifies a last-bit difference in a value that sits at a sign
boundary. Measured on a BHViT-Tiny (``docs/validation.md``): ENABLE_ALL max |diff| 2.7e-5 against
PyTorch, DISABLE_ALL 0.24 (1.3% of the logits' std; cosine 0.999992), for the fused and the reference
graph alike. The pass decision uses onnxruntime's default (what a user running the ONNX gets); the
numbers without graph optimizations are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.manifest import DEFAULT_TOLERANCES
from .golden import Golden
from .verify.metrics import Accuracy, compare

#: The spec's end-to-end tolerance (shared/spec/bhvit-reference.md "How to compare"), as verify uses it.
TOLERANCES = dict(DEFAULT_TOLERANCES)
#: onnxruntime graph optimization level the export is validated at (its default), and the one reported beside it.
ORT_LEVEL = "ORT_ENABLE_ALL"
OTHER_LEVEL = "ORT_DISABLE_ALL"


@dataclass(frozen=True)
class Validation:
    """The exported graph in onnxruntime against the PyTorch logits on the golden inputs."""

    accuracy: Accuracy
    passed: bool
    failures: list[str]
    ort_level: str
    unoptimized: Accuracy | None = None  # the same at OTHER_LEVEL, for information

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": self.failures, "onnxruntime_graph_optimization": self.ort_level,
                "tolerances": TOLERANCES, **self.accuracy.to_json(),
                "without_graph_optimization": self.unoptimized.to_json() if self.unoptimized else None}

    def line(self) -> str:
        a = self.accuracy
        verdict = "PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"
        line = (f"validated in onnxruntime against PyTorch on {a.count} golden inputs: {verdict}  cosine {a.cosine:.6f}, "
                f"max |diff| {a.max_abs_err:.4g} ({a.max_abs_over_std:.2%} of std), top-1 agreement {a.top1_agreement:.0%}")
        if self.unoptimized is not None:
            u = self.unoptimized
            line += (f" (graph optimizations off: cosine {u.cosine:.6f}, max |diff| {u.max_abs_err:.4g}, "
                     f"top-1 {u.top1_agreement:.0%})")
        return line


def run_onnxruntime(model: Path | bytes, x: np.ndarray, level: str = ORT_LEVEL, threads: int = 0) -> np.ndarray:
    """Logits of ``model`` (a path or serialized bytes) on ``x``, one row at a time."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float32)


def validate_export(model: Path, golden: Golden, level: str = ORT_LEVEL, other: str | None = OTHER_LEVEL) -> Validation:
    """Run ``model`` in onnxruntime on ``golden.inputs`` and compare with ``golden.outputs`` (PyTorch).

    Decided at ``level``; ``other`` (graph optimizations off by default) is run and reported too.
    """
    acc = compare(run_onnxruntime(model, golden.inputs, level), golden.outputs)
    ok, failed = acc.passes(TOLERANCES)
    unopt = compare(run_onnxruntime(model, golden.inputs, other), golden.outputs) if other else None
    return Validation(acc, ok, failed, level, unopt)
