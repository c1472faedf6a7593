"""Prepare, on this (GPU-less) machine, everything ``benchmarks/cuda_device_check.py`` needs on a GPU one.

The GPU machine (``../shared/notes/gpu-device.md``) has Python 3.12, torch (CUDA), onnxruntime and
nvcc, but no TVM, and what it runs must travel with the working tree (64 MiB at most). So this
builds one folder (default ``build/cuda-check``, git-ignored, carried with ``run(carry=[...])``)::

    bundle/                 the fixture compiled for the GPU (``compile -t cuda-sm90``): model.so
                            (x86-64 host code + sm_90 cubins), golden inputs, official logits
    runtime/bhvit-run       the native runner (``--device cuda``), built here for x86-64, beside
    runtime/libtvm_*.so     libtvm_runtime, libtvm_ffi and libtvm_runtime_cuda (TVM's CUDA device API)
    ops/<Op>/               one single-op bundle per packed kernel family (BinaryLinear,
                            BinaryConv2d, BinaryAttentionScores, QDAttentionContext): model.so,
                            input.npy, expected.npy (onnxruntime on the op's ONNX function body here)
    reference.onnx          the float reference graph (for onnxruntime-gpu and TensorRT there)
    checkpoint.pth          the fixture's checkpoint (the PyTorch reference there)
    payload.json            what was built, with which versions, file sizes and SHA-256

Usage::

    python -m bhvit_export.benchmarks.cuda_payload [--fixture micro] [--target cuda-sm90] [--out build/cuda-check] [--json]

Refuses (exit 2) when the folder would pass the carry limit. Written under a temporary name and
renamed, so a failed build never leaves a half payload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: What the device tool carries at most (64 MiB), less room for the check's own outputs.
CARRY_LIMIT = 64 * 2**20
OPS = ("BinaryLinear", "BinaryConv2d", "BinaryAttentionScores", "QDAttentionContext")
DEFAULT_OUT = Path("build/cuda-check")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _runtime(dest: Path) -> None:
    """The native runner and the three TVM runtime libraries it needs for CUDA."""
    import tvm

    from bhvit_export.targets.native_build import build_runner

    build_runner("x86_64", dest)
    plugin = Path(tvm.__file__).resolve().parent / "lib" / "libtvm_runtime_cuda.so"
    shutil.copy2(plugin, dest / plugin.name)


def _op_bundles(dest: Path, target: str) -> None:
    """One small CUDA library per op with its input and the onnxruntime result of its ONNX body."""
    import onnxruntime as ort

    from bhvit_export.targets.build import build
    from bhvit_export.targets.build_cuda import export_cuda_library
    from bhvit_export.targets.importer import import_fused
    from bhvit_export.targets.target_spec import resolve
    from tests.targets.test_import import _single_op_model

    tgt = resolve(target).target
    for op in OPS:
        folder = dest / op
        folder.mkdir(parents=True)
        model, x = _single_op_model(op, np.random.default_rng(zlib.crc32(op.encode())))
        x = np.concatenate([x, -0.5 * x + 0.25]).astype(np.float32)  # two samples: batch blocks of 1
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        expected = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
        export_cuda_library(build(import_fused(model, batch=1, target=tgt), tgt), folder / "model.so")
        np.save(folder / "input.npy", x)
        np.save(folder / "expected.npy", expected.astype(np.float32))


def prepare(fixture: str, target: str, out: Path, say=print) -> dict[str, Any]:  # noqa: ANN001
    """Build the payload folder at ``out`` (replacing it); returns its description."""
    from bhvit_export.atomic import atomic_path
    from bhvit_export.compile import compile_model
    from bhvit_export.errors import TargetError
    from bhvit_export.export.convert import convert_checkpoint
    from tests.conftest import official_path

    src = official_path(fixture)
    t0 = time.perf_counter()
    with atomic_path(out, directory=True) as tmp:
        work = tmp / ".work"
        work.mkdir()
        say(f"exporting {fixture} (fused and reference ONNX)")
        fused = work / "fused.onnx"
        convert_checkpoint(src / "checkpoint.pth", fused, reference=False)
        convert_checkpoint(src / "checkpoint.pth", tmp / "reference.onnx", reference=True)
        say(f"compiling the bundle for {target} (nvcc)")
        compile_model(fused, tmp / "bundle", target=target, golden_inputs=src / "inputs.npy",
                      golden_outputs=src / "logits.npy", native=False)
        say("building the native runner and the TVM runtime (x86-64, CUDA plugin)")
        _runtime(tmp / "runtime")
        say("compiling the single-op bundles")
        _op_bundles(tmp / "ops", target)
        shutil.copy2(src / "checkpoint.pth", tmp / "checkpoint.pth")
        shutil.rmtree(work)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if total > CARRY_LIMIT:
            raise TargetError(f"the payload is {total / 2**20:.1f} MiB, over the {CARRY_LIMIT / 2**20:.0f} MiB carry limit")
        import tvm

        info = {
            "fixture": fixture,
            "target": target,
            "tvm": tvm.__version__,
            "bytes": total,
            "build_s": round(time.perf_counter() - t0, 1),
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
        }
        (tmp / "payload.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixture", default="micro", help="official fixture (../shared/fixtures/official/NAME)")
    p.add_argument("--target", default="cuda-sm90", help="compile target of the bundle (the lent GPU's arch)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", action="store_true", help="print the payload description as JSON")
    args = p.parse_args(argv)
    from bhvit_export.errors import BhvitError

    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    try:
        info = prepare(args.fixture, args.target, args.out, say)
    except (BhvitError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "files"}, indent=2))
    else:
        print(f"{args.out}: {info['bytes'] / 2**20:.1f} MiB, {len(info['files'])} files, built in {info['build_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
