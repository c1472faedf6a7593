"""Check every ``bhvit`` node of an ONNX file against its op's schema before anything reads it.

The census and the TVM converters read a node's attributes (``in_features``, ``kernel_shape``, ...)
and index its inputs by position; a node that lacks one (a damaged or hand-edited file) would
otherwise end in a KeyError deep inside ``inspect`` or TVM's importer. The schema is the op's ONNX
function (``passes/ops.py``): its inputs, outputs and attribute names; the attribute types below are
what those function bodies use them as.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelFileError

#: Attribute name -> ONNX AttributeProto type (1 FLOAT, 2 INT, 7 INTS) as our function bodies use it.
ATTRIBUTE_TYPES = {
    "in_features": 2, "ratio": 2, "group": 2, "num_heads": 2,
    "kernel_shape": 7, "strides": 7, "pads": 7, "dilations": 7,
    "scale": 1,
}
#: Largest integer attribute accepted: a feature count or kernel beyond it is not a BHViT layer, and
#: products of such values are what the census and the kernels compute with.
MAX_ATTRIBUTE_INT = 1 << 24
_TYPE_NAMES = {1: "FLOAT", 2: "INT", 7: "INTS"}


@lru_cache(maxsize=1)
def _schemas() -> dict[str, tuple[int, int, tuple[str, ...]]]:
    """op type -> (number of inputs, number of outputs, attribute names), from the function protos."""
    from bhvit_export.passes.ops import function_protos

    return {f.name: (len(f.input), len(f.output), tuple(f.attribute)) for f in function_protos()}


def _bad_value(name: str, attr: Any) -> str | None:
    import math

    if attr.type == 2:
        lo = 0 if name == "pads" else 1
        return None if lo <= attr.i <= MAX_ATTRIBUTE_INT else f"{attr.i}"
    if attr.type == 7:
        lo = 0 if name == "pads" else 1
        ok = len(attr.ints) in ((4,) if name == "pads" else (2,)) and all(lo <= v <= MAX_ATTRIBUTE_INT for v in attr.ints)
        return None if ok else str(list(attr.ints))
    if attr.type == 1:
        return None if math.isfinite(attr.f) and attr.f > 0 else f"{attr.f}"
    return None


def check_bhvit_nodes(model: Any, path: Path, domain: str = "bhvit") -> None:
    """Raise ModelFileError for the first ``bhvit`` node whose inputs or attributes do not fit its op."""
    try:
        schemas = _schemas()
    except ImportError:  # a build without passes: the importer refuses the ops anyway
        return
    for node in model.graph.node:
        if node.domain != domain or node.op_type not in schemas:
            continue  # unknown ops are refused by compile and named by inspect
        n_in, n_out, names = schemas[node.op_type]
        what = f"{path}: {node.op_type} node '{node.name}'"
        if len(node.input) != n_in or len(node.output) != n_out or not all(node.input) or not all(node.output):
            raise ModelFileError(f"{what} has {len(node.input)} inputs and {len(node.output)} outputs, expected {n_in} and {n_out}")
        attrs = {a.name: a for a in node.attribute}
        for name in names:
            if name not in attrs:
                raise ModelFileError(f"{what} lacks its attribute '{name}'")
            attr, want = attrs[name], ATTRIBUTE_TYPES.get(name)
            if want is not None and attr.type != want:
                raise ModelFileError(f"{what}: attribute '{name}' is of type {attr.type}, expected {_TYPE_NAMES[want]}")
            bad = _bad_value(name, attr)
            if bad is not None:
                raise ModelFileError(f"{what}: attribute '{name}' is {bad}, out of range")
