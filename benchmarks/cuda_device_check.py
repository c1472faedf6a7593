"""One-shot check of a CUDA bundle on a machine with an NVIDIA GPU: accuracy vs the golden logits
and latency, printed as one JSON object.

Usage (on the GPU machine; needs only numpy and the same TVM runtime that compiled the bundle)::

    python benchmarks/cuda_device_check.py BUNDLE_DIR [--batch B] [--repeats 50] [--warmup 5]

``BUNDLE_DIR`` holds ``model.so`` (built with ``targets.build_cuda.build_cuda`` for a CUDA target
with an x86-64 host, e.g. ``targets.build_cuda.X86_SM90`` for an H100/H200), ``golden/inputs.npy``
and ``golden/reference.npy``. The compiled batch is read from ``manifest.json`` (``input.shape``)
when there is one, else ``--batch`` (default 1). Tolerances are the spec's end-to-end ones (or the
manifest's): worst-row cosine >= 0.9995, max |diff| <= 5% of the reference's std, same top-1.
The exit status is 0 when they hold, 1 when not, 2 when the bundle cannot be run.
``--device cpu`` runs a bundle built for the host CPU the same way (a dry run of this script).

No torch and nothing of this repository is imported, so the script can be copied alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: The spec's end-to-end thresholds (``tests/helpers.py``, ``bhvit_export/bundle/manifest.py``).
TOLERANCES = {"min_cosine": 0.9995, "max_abs_over_std": 0.05, "min_top1_agreement": 1.0}


def metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Worst-row cosine, max |diff|, max |diff| / std(ref), top-1 agreement (as tests/helpers.py)."""
    g = got.reshape(len(got), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    denom = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.sum(g * r, axis=1) / np.where(denom == 0, 1.0, denom)
    max_abs = float(np.max(np.abs(g - r)))
    std = float(np.std(r))
    return {
        "cosine": float(np.min(cos)),
        "max_abs": max_abs,
        "max_abs_over_std": max_abs / std if std > 0 else (0.0 if max_abs == 0 else float("inf")),
        "top1_agreement": float(np.mean(np.argmax(g, axis=1) == np.argmax(r, axis=1))),
    }


def within(m: dict[str, float], tol: dict[str, float]) -> bool:
    return (
        m["cosine"] >= tol["min_cosine"]
        and m["max_abs_over_std"] <= tol["max_abs_over_std"]
        and m["top1_agreement"] >= tol["min_top1_agreement"]
    )


def _manifest(bundle: Path) -> Optional[dict[str, Any]]:
    path = bundle / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run(
    bundle: Path, batch: Optional[int], repeats: int, warmup: int, device: str = "cuda"
) -> dict[str, Any]:
    """Load, run every golden input, time one batch; ``device="cpu"`` dry-runs a CPU bundle."""
    import tvm
    from tvm import relax

    manifest = _manifest(bundle)
    tol = dict(TOLERANCES)
    if manifest is not None:
        tol.update({k: float(v) for k, v in manifest.get("tolerances", {}).items() if k in tol})
        if batch is None:
            batch = int(manifest["input"]["shape"][0])
    batch = batch or 1
    inputs = np.load(bundle / "golden" / "inputs.npy").astype(np.float32)
    reference = np.load(bundle / "golden" / "reference.npy")
    if len(inputs) % batch:
        raise ValueError(f"{len(inputs)} golden inputs do not split into batches of {batch}")

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        raise RuntimeError(f"no {device.upper()} device visible to TVM")
    t0 = time.perf_counter()
    lib = tvm.runtime.load_module(str(bundle / "model.so"))
    machine = relax.VirtualMachine(lib, dev)
    load_s = time.perf_counter() - t0

    def call(x: np.ndarray) -> Any:
        out = machine["main"](tvm.runtime.tensor(np.ascontiguousarray(x), dev))
        return out if hasattr(out, "numpy") else out[0]

    outs = [call(inputs[i : i + batch]).numpy() for i in range(0, len(inputs), batch)]
    got = np.concatenate(outs).reshape(reference.shape)
    m = metrics(got, reference)

    x = tvm.runtime.tensor(np.ascontiguousarray(inputs[:batch]), dev)
    for _ in range(warmup):
        machine["main"](x)
    dev.sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        machine["main"](x)
        dev.sync()
        times.append(time.perf_counter() - t)
    return {
        "bundle": str(bundle),
        "device": str(dev.device_name) if device == "cuda" else "cpu",
        "compute_version": str(dev.compute_version) if device == "cuda" else "",
        "tvm": tvm.__version__,
        "batch": batch,
        "images": int(len(inputs)),
        **m,
        "tolerances": tol,
        "pass": within(m, tol),
        "load_s": load_s,
        "latency_ms_median": 1e3 * statistics.median(times),
        "latency_ms_min": 1e3 * min(times),
        "repeats": repeats,
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--batch", type=int, default=None, help="compiled batch (default: manifest, else 1)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: dry run of a CPU bundle")
    args = p.parse_args(argv)
    try:
        report = run(args.bundle, args.batch, args.repeats, args.warmup, args.device)
    except Exception as err:  # one line for the caller, whatever failed (load, CUDA, shapes)
        print(json.dumps({"bundle": str(args.bundle), "error": f"{type(err).__name__}: {err}"}))
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
