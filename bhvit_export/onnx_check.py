"""Shape inference plus the full ONNX checker: every model we write goes through :func:`check_model`.

A core utility (no torch, no TVM): the exporter checks its reference graph with it, and the graph
passes check the fused graph with it, so fusing an ONNX file needs neither torch nor the exporter.
The caller names the stage through the error class: a reference graph that fails is an
:class:`~bhvit_export.errors.ExportError`, a fused graph that fails is a
:class:`~bhvit_export.errors.PassError` (the passes produced it, not the exporter).
"""

from __future__ import annotations

import onnx

from .errors import BhvitError


def check_model(proto: onnx.ModelProto, error: type[BhvitError], what: str) -> onnx.ModelProto:
    """``proto`` with inferred shapes, after ``onnx.checker`` (full check); ``error`` if it is not valid.

    ``what`` names the graph in the message ("the exported graph", "the fused graph").
    """
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise error(f"{what} is not valid ONNX: {str(e).splitlines()[0]}") from e
    return proto
