"""Run a bundle from Python without the CLI, with a clear error for another batch size.

``model.so`` is compiled for one static input shape (``manifest.json`` ``input.shape``: our packed
kernels and schedules are specialised to it). Plain TVM called with another batch stops with
``match_cast error, shape[0] mismatch to specified constant``; :class:`BundleModel` checks the shape
first and says which batch the bundle takes, and :meth:`BundleModel.run_batches` feeds any number of
images through the compiled batch (padding the last one). The manifest and every file's SHA-256 are
checked before the library is loaded, as ``verify`` does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import BundleError
from . import manifest as mf

_ANNOTATION = re.compile(r"annotation=R\.Tensor\(\(([\d, ]+)\)")


def compiled_shape_in_error(message: str) -> Optional[list[int]]:
    """The static shape named by TVM's ``match_cast`` error, or None for another error."""
    m = _ANNOTATION.search(message)
    if "match_cast" not in message or m is None:
        return None
    return [int(d) for d in m.group(1).split(",") if d.strip()]


def batch_error(compiled: list[int], got: list[int]) -> BundleError:
    """The error for input ``got`` on a library compiled for ``compiled`` (a batch hint when only the batch differs)."""
    if list(got[1:]) != list(compiled[1:]):
        return BundleError(f"this bundle takes float32 input {compiled} (images of {compiled[1:]}), got {got}")
    return BundleError(
        f"this bundle is compiled for input {compiled} (batch {compiled[0]}), got {got}: feed batches of "
        f"{compiled[0]} (BundleModel.run_batches does), or recompile with `bhvit-export compile MODEL.onnx --batch {got[0]}`"
    )


class BundleModel:
    """``model = BundleModel("bundle"); logits = model(x)`` with ``x`` float32 ``manifest.input.shape``."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import tvm
        from tvm import relax

        self.root = Path(path)
        self.manifest = mf.check_bundle(self.root)  # hashes before the library runs any code
        self.input_shape = [int(d) for d in self.manifest.input["shape"]]
        self.dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(self.root / mf.LIBRARY)), self.dev)

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tvm

        if list(x.shape) != self.input_shape:
            raise batch_error(self.input_shape, list(x.shape))
        y: Any = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev))
        return (y if hasattr(y, "numpy") else y[0]).numpy()

    def run_batches(self, x: np.ndarray) -> np.ndarray:
        """Logits of any number of images ``[N, 3, S, S]``, run ``batch`` at a time."""
        b = self.batch
        if list(x.shape[1:]) != self.input_shape[1:]:
            raise batch_error(self.input_shape, list(x.shape))
        out = []
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(self(chunk)[: b - pad])
        return np.concatenate(out)
