"""Run a reference and a fused model side by side in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from bhvit_export.passes.pipeline import FuseReport, fuse_model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FuseReport, Counter]:
    rep = FuseReport()
    fused = fuse_model(model, rep)
    return fused, rep, Counter(n.op_type for n in fused.graph.node)


def assert_close(got: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    assert err <= tol * scale, f"max |diff| {err} > {tol} * {scale}"
