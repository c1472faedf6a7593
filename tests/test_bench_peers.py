"""Issue #16 point 11: the peers bench compares with (OpenVINO, torch.compile, onnxruntime int8),
``bench --checkpoint``, and a missing package as a skipped row instead of a crash."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bhvit_export.benchmarks.peers import constants_to_initializers
from tests.helpers import official_path


def test_constants_become_initializers_with_the_same_outputs() -> None:
    #   x --MatMul(W: Constant)--> y        becomes        x --MatMul(W: initializer)--> y
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    const = helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w))
    mm = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph([const, mm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    out = constants_to_initializers(model)
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == ["MatMul"]
    assert [i.name for i in out.graph.initializer] == ["W"]
    assert [n.op_type for n in model.graph.node] == ["Constant", "MatMul"]  # the input is not modified
    import onnxruntime as ort

    x = np.ones((2, 4), np.float32)
    got = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, out)]
    np.testing.assert_array_equal(got[0], got[1])


def test_bench_checkpoint_with_a_missing_peer_is_a_skipped_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bhvit_export.benchmarks import end_to_end

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    results = end_to_end.run([str(official_path("micro") / "checkpoint.pth")], [1], [1], rounds=1, warmup=1,
                             include=("onnxruntime_fp32", "openvino_fp32", "onnxruntime_int8"), cache_dir=tmp_path)
    (r,) = results
    assert r.config.label == "checkpoint b1 t1"
    assert set(r.latency) == {"onnxruntime_fp32", "onnxruntime_int8"}
    assert "openvino is not installed" in r.skipped["openvino_fp32"]
    assert r.agreement["onnxruntime_fp32"]["cosine"] > 0.999  # fp32 computes the same model
    assert -1.0 <= r.agreement["onnxruntime_int8"]["cosine"] <= 1.0
    assert "openvino_fp32" in end_to_end.table(results) and "skipped" in end_to_end.table(results)
