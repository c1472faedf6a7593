"""What a user would deploy instead of bhvit-export, each reduced to ``call(x) -> None`` at fixed threads.

- ``openvino_fp32``: OpenVINO's CPU plugin on the reference ONNX, ``PERFORMANCE_HINT=LATENCY`` and
  ``INFERENCE_PRECISION_HINT=f32`` (on CPUs with AMX or AVX512-BF16 the plugin would otherwise run
  bf16, which is not the fp32 comparison we claim).
- ``torch_compile``: ``torch.compile(model, backend="inductor")`` of the reference PyTorch model; the
  compile happens in the warm-up calls, which the benchmark does not time.
- ``onnxruntime_int8``: onnxruntime's dynamic quantization (int8 weights, activations quantized at run
  time) of the reference ONNX. torch's exporter writes the (binarized) weights as ``Constant`` nodes,
  which ``quantize_dynamic`` does not see; they are turned into initializers first.

A peer whose package is missing raises :class:`Unavailable`; the benchmark reports it as a skipped row
with the reason, never as a crash. ``pip install 'bhvit-export[bench]'`` installs them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

Call = Callable[[np.ndarray], Any]
PEERS = ("openvino_fp32", "torch_compile", "onnxruntime_int8")


class Unavailable(Exception):
    """This system cannot run here (a package is missing); the message says what to install."""


def _save_once(proto: Any, cache: Path, label: str) -> Path:
    """The ONNX written to the cache under a key of its bytes (the peers read files, not protos)."""
    data = proto.SerializeToString(deterministic=True)
    path = cache / f"{label}-{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    if not path.is_file():
        from bhvit_export.atomic import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path


def openvino_call(reference: Any, threads: int, cache: Path) -> Call:
    try:
        import openvino as ov
    except ImportError:
        raise Unavailable("openvino is not installed (pip install 'bhvit-export[bench]')") from None
    core = ov.Core()
    model = core.read_model(str(_save_once(reference, cache, "reference")))
    compiled = core.compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
    })
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def torch_compile_call(model: Any, threads: int) -> Call:
    import torch

    try:
        compiled = torch.compile(model, backend="inductor")
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        raise Unavailable(f"torch.compile is unavailable here ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None

    def call(x: np.ndarray) -> Any:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.no_grad():
            return compiled(torch.from_numpy(x))

    return call


def constants_to_initializers(model: Any) -> Any:
    """A copy of ``model`` whose tensor ``Constant`` nodes are graph initializers (what quantizers read)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for node in out.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or node.domain not in ("", "ai.onnx"):
            keep.append(node)
            continue
        arr = numpy_helper.to_array(value.t)
        out.graph.initializer.append(numpy_helper.from_array(arr, name=node.output[0]))
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def quantized_int8(reference: Any, cache: Path) -> Path:
    """The reference ONNX after onnxruntime's dynamic int8 quantization (cached by the input's bytes)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise Unavailable("onnxruntime.quantization is not importable (pip install onnxruntime onnx)") from None
    src = _save_once(constants_to_initializers(reference), cache, "reference-init")
    out = src.with_name(src.stem.replace("reference-init", "reference-int8") + ".onnx")
    if not out.is_file():
        import logging

        from bhvit_export.atomic import atomic_path

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" warning on every call
        try:
            with atomic_path(out) as tmp:
                quantize_dynamic(str(src), str(tmp.with_suffix(".onnx")), weight_type=QuantType.QInt8)
                tmp.with_suffix(".onnx").replace(tmp)
        finally:
            root.setLevel(level)
    return out


def ort_int8_call(reference: Any, threads: int, cache: Path) -> Call:
    from .systems import ort_call

    return ort_call(quantized_int8(reference, cache).read_bytes(), threads)
