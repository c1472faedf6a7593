"""Which stage a failure of ``fuse_model`` names: the fused graph is checked after the passes, and a
graph a pass broke is a PassError (stage ``passes``), not an ExportError of the torch export."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from bhvit_export.errors import ExportError, PassError
from bhvit_export.passes import pipeline


def _relu_model() -> onnx.ModelProto:
    """x -> Relu -> y, float32 [1, 4], at the opset the passes expect."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", pipeline.ONNX_OPSET)])


def _breaks_the_graph(graph: gs.Graph) -> int:
    graph.nodes[0].op = "NoSuchOp"  # what a buggy rewrite could leave behind
    return 1


def test_a_graph_broken_by_a_pass_is_a_pass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "PASSES", [("breaks", _breaks_the_graph)])
    with pytest.raises(PassError, match="the fused graph is not valid ONNX") as err:
        pipeline.fuse_model(_relu_model())
    assert not isinstance(err.value, ExportError) and err.value.stage == "passes"


def test_an_intact_graph_passes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "PASSES", [])
    out = pipeline.fuse_model(_relu_model())
    assert [n.op_type for n in out.graph.node] == ["Relu"]
