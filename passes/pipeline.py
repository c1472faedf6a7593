"""The pass pipeline: float reference ONNX -> fused ``bhvit`` ONNX. Order matters:

1. ``fuse_attention_scores`` first: its Sign(q), Sign(k) look like binary-linear inputs to no one,
   but matching them before anything rewrites the Reshape/Transpose chains keeps the pattern whole.
2. ``fuse_qd_context`` / ``fuse_gsb_context``: need the Softmax -> quantizer -> MatMul(sign(v))
   chain intact (a model has one quantizer kind or the other).
3. ``fuse_binary_linear`` and ``fuse_binary_conv``: the weight layers.
4. ``fold_epilogue``: it extends the binary ops written by 3 with the BN/scale that follows.
5. ``mlp_expand``: it needs 4's folded BN to see the expansion's residual/RPReLU chain, and
   turns the MLP's expansion into a packed-bit producer feeding a ``PackedBinaryLinear``.
6. ``fold_residual``: the RPReLU's ``- move1`` after a residual add or the conv's token
   layout into the layer's bias (it would hide the expansion's ``Sub(b1)`` from 5).
7. ``sink_constants`` last: the float remainder's constant adds sink and merge (it would hide
   the constants 4-6 fold).
Then cleanup, toposort, function bodies attached, shapes inferred and checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from bhvit_export.errors import PassError

from .attention_scores import fuse_attention_scores
from .binary_conv import fuse_binary_conv
from .binary_linear import fuse_binary_linear
from .fold_epilogue import fold_epilogue
from .fold_residual import fold_residual
from .mlp_expand import fuse_mlp_expand
from .op_schema import DOMAIN, DOMAIN_VERSION, ONNX_OPSET, function_protos
from .sink_constants import sink_constants
from .gsb_context import fuse_gsb_context
from .qd_context import fuse_qd_context

PASSES: list[tuple[str, Callable[[gs.Graph], int]]] = [
    ("attention_scores", fuse_attention_scores),
    ("qd_context", fuse_qd_context),
    ("gsb_context", fuse_gsb_context),
    ("binary_linear", fuse_binary_linear),
    ("binary_conv", fuse_binary_conv),
    ("fold_epilogue", fold_epilogue),
    ("mlp_expand", fuse_mlp_expand),
    ("fold_residual", fold_residual),
    ("sink_constants", sink_constants),
]


@dataclass
class FuseReport:
    """How many rewrites each pass made."""

    counts: dict[str, int] = field(default_factory=dict)


def fuse_model(proto: onnx.ModelProto, report: FuseReport | None = None) -> onnx.ModelProto:
    """Apply every pass to a reference model and return the fused, checked model."""
    opset = {o.domain: o.version for o in proto.opset_import}
    if opset.get("", opset.get("ai.onnx", 0)) != ONNX_OPSET:
        raise PassError(f"the reference graph must use opset {ONNX_OPSET}, got {opset.get('', '?')}")
    graph = gs.import_onnx(proto)
    for name, fn in PASSES:
        n = fn(graph)
        if report is not None:
            report.counts[name] = n
        graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=True)
    used = {n.op_type for n in out.graph.node if n.domain == DOMAIN}
    del out.opset_import[:]
    out.opset_import.extend([onnx.helper.make_opsetid("", ONNX_OPSET)])
    if used:
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        out.functions.extend(function_protos(used))
    out.ir_version = proto.ir_version
    out.producer_name = proto.producer_name
    out.producer_version = proto.producer_version
    out.metadata_props.extend(proto.metadata_props)
    out.doc_string = proto.doc_string.replace("float reference graph", "fused packed-bit graph")
    from bhvit_export.onnx_check import check_onnx

    return check_onnx(out, PassError, "the fused graph")  # a pass made it: its stage, not the export's
