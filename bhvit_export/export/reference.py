"""Export the PyTorch model to the float reference ONNX graph.

The reference graph is what every later stage is checked against, so it must be deterministic (same
checkpoint, same bytes) and plain: ``Sign`` on activations, binarized weights folded to constants
(``+-s`` per output channel), explicit pads, a dynamic batch on ``pixel_values``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

from ..errors import ExportError
from ..model import BHViT

OPSET = 18
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


def export_reference(model: BHViT, *, opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``model`` into an onnx.checker-clean, shape-inferred ModelProto (dynamic batch)."""
    model = model.freeze()
    size = model.config.image_size
    dummy = torch.zeros(1, 3, size, size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:  # the exporter raises many types; report the stage, keep one line
        raise ExportError(f"torch.onnx.export failed: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name = "bhvit-export"
    proto.doc_string = "BHViT float reference graph: " + model.config.describe()
    onnx.helper.set_model_props(proto, model_metadata(model))
    return finalize(proto)


def model_metadata(model: BHViT) -> dict[str, str]:
    """Metadata every later stage reads: the architecture, and which paper row it is (if any)."""
    import json

    cfg = model.config
    meta = {"bhvit.config": json.dumps(cfg.to_json(), sort_keys=True)}
    name = cfg.paper_name()
    if name:
        meta["bhvit.paper_config"] = name if cfg.binary_downsample else f"{name}-fp-downsampling"
    return meta


def finalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Infer shapes and run the checker on the torch export (an ExportError if it is not valid)."""
    from ..onnx_check import check_onnx

    return check_onnx(proto, ExportError, "the exported graph")


def save_model(proto: onnx.ModelProto, path: str | Path) -> int:
    """Serialize deterministically to ``path`` via a temp file + rename; return the byte size."""
    from ..atomic import atomic_path

    data = proto.SerializeToString(deterministic=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)
