"""The systems the benchmark compares, each reduced to ``call(x) -> None`` at fixed threads.

PyTorch eager runs our reference model (the official math); onnxruntime fp32 runs the reference
ONNX (what a user without this tool would deploy); TVM fp32 runs the same reference ONNX through our
build (float, no bhvit passes); ``bhvit`` is the fused graph with the packed kernels. OpenVINO fp32,
torch.compile and onnxruntime int8 are in :mod:`.peers` (optional packages: skipped when missing).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

Call = Callable[[np.ndarray], Any]
SYSTEMS = ("bhvit", "onnxruntime_fp32", "tvm_fp32", "pytorch", "openvino_fp32", "torch_compile", "onnxruntime_int8")


def pytorch_call(model: Any, threads: int) -> Call:
    import torch

    def call(x: np.ndarray) -> Any:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.no_grad():
            return model(torch.from_numpy(x))

    return call


def ort_call(model_bytes: bytes, threads: int) -> Call:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def tvm_call(library: str, threads: int) -> Call:
    """A Relax VM on the host CPU. Threads: see :func:`set_tvm_threads` (shrink-only)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(library), dev)
    fn = vm["main"]

    def call(x: np.ndarray) -> Any:
        set_tvm_threads(threads)
        return fn(tvm.runtime.tensor(x, dev))

    return call


_TVM_THREADS: list[int] = []


def set_tvm_threads(threads: int) -> None:
    """Resize TVM's CPU pool (sized once from TVM_NUM_THREADS; config_threadpool only shrinks it).

    The benchmark runs thread counts in descending order and sets TVM_NUM_THREADS to the largest
    before any TVM call, so every later size is a shrink.
    """
    from bhvit_export.targets.threads import set_threads

    if _TVM_THREADS and _TVM_THREADS[-1] == threads:
        return
    set_threads(threads)
    _TVM_THREADS.append(threads)


def init_threads(max_threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(max_threads)
