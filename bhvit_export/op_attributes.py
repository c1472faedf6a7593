"""Check every ``bhvit`` node of an ONNX file against its op's schema before anything reads it.

The census and the TVM converters read a node's inputs and attributes (``in_features``,
``kernel_shape``, ...) by name through the op's schema entry (:mod:`bhvit_export.passes.op_schema`); a node that
lacks one (a damaged or hand-edited file) would otherwise end in a KeyError deep inside ``inspect``
or TVM's importer. The entry holds the inputs, outputs, attribute types and accepted ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_bhvit_nodes(model: Any, path: Path, domain: str | None = None) -> None:
    """Raise ModelFileError for the first ``bhvit`` node whose inputs or attributes do not fit its op."""
    try:
        from bhvit_export.passes.op_schema import DOMAIN, schema_of
    except ImportError:  # a build without passes: the importer refuses the ops anyway
        return
    domain = DOMAIN if domain is None else domain
    for node in model.graph.node:
        schema = schema_of(node.op_type) if node.domain == domain else None
        if schema is None:
            continue  # unknown ops are refused by compile and named by inspect
        schema.validate(node, f"{path}: {node.op_type} node '{node.name}'")  # OpSchemaError is a ModelFileError
