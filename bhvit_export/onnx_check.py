"""Shape inference + the ONNX checker, with the failure raised as the caller's stage's error.

Every model we write goes through :func:`check_onnx`: the torch export (an ExportError: the
exporter produced it) and the fused graph after the passes (a PassError: a pass produced it).
Kept free of torch so that fusing an ONNX never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BhvitError

if TYPE_CHECKING:
    import onnx


def check_onnx(proto: "onnx.ModelProto", error: type[BhvitError], what: str) -> "onnx.ModelProto":
    """``proto`` with inferred shapes, checked in full; ``error(f"{what} is not valid ONNX: ...")`` if not."""
    import onnx

    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several kinds; the first line is the finding
        raise error(f"{what} is not valid ONNX: {str(e).splitlines()[0]}") from e
    return proto
