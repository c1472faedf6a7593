"""Is an ONNX graph the fused one (``bhvit`` ops), or the float reference that compiles to no binary kernel?

``compile`` of the reference graph succeeds and writes a library several times larger and slower,
with every binary layer run as a float MatMul/Conv: the mistake goes unnoticed until the bench. So
``compile`` refuses a graph without ``bhvit`` ops unless ``--allow-float`` says it is meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .census import BINARY_DOMAIN
from .errors import ModelFileError


def binary_op_count(model: Any) -> int:
    """How many nodes of ``model`` (an onnx ModelProto) are ``bhvit`` ops."""
    return sum(1 for n in model.graph.node if n.domain == BINARY_DOMAIN)


def require_binary_ops(model: Any, path: Path, allow_float: bool) -> list[str]:
    """Raise unless ``model`` has bhvit ops or ``allow_float``; the notes a float compile adds to its report."""
    if binary_op_count(model):
        return []
    reference = any(p.key == "bhvit.golden" for p in model.metadata_props)
    what = "the float reference graph (to-onnx --reference)" if reference else "a float graph"
    if not allow_float:
        raise ModelFileError(
            f"{path} has no bhvit ops: it is {what}, which compiles without any binary kernel; "
            "run to-onnx without --reference for the fused graph, or pass --allow-float to compile it as it is"
        )
    return [f"--allow-float: {path.name} has no bhvit ops, the library runs every binary layer in float"]
