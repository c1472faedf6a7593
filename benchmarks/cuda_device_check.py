"""One prepared check of the CUDA build on a GPU machine: verify the bundle, then time it against peers.

Run on the GPU machine (x86-64, NVIDIA GPU, Python 3, numpy; torch, onnxruntime-gpu and TensorRT
where installed; **no TVM needed**) from the repository root, on the folder that
``python -m bhvit_export.benchmarks.cuda_payload`` prepared here::

    python3 benchmarks/cuda_device_check.py build/cuda-check [--budget-s 300] [--runs 50] [--save OUT.json] [--json]

In order, each step skipped (with the reason) when what it needs is missing or the time budget is spent:

1. **kernels**: the single-op bundles (``ops/<Op>``: one packed kernel family each) run on the GPU
   through the native runner; each output is compared with onnxruntime's result of the op's ONNX
   function body (computed when the payload was built): tells which kernel is wrong, if one is;
2. **bundle**: the whole model on the golden inputs; compared with the official (CPU) logits;
3. **PyTorch**: the reference model (``checkpoint.pth``, this repository's ``bhvit_export.model``)
   on CUDA, eager, on the same inputs; **the verdict**: bundle vs PyTorch CUDA within the spec's
   end-to-end tolerance (worst-row cosine >= 0.9995, max |diff| <= 5% of the reference's std,
   same top-1);
4. **timing**, one image per call (the bundle's batch): the bundle (runner clock around ``main`` and a
   stream sync), PyTorch CUDA eager, and on ``reference.onnx``: onnxruntime's CUDA provider and
   TensorRT fp16 (onnxruntime's TensorRT provider, else the ``tensorrt`` module); their outputs are
   compared with PyTorch too (reported, fp16 is not held to the fp32 tolerance).

Prints a table (``--json``: the JSON object instead); ``--save`` also writes the JSON to a file.
Exit status: 0 when every check that ran passed, 1 when one failed, 2 when the bundle could not be
run at all (no GPU, a broken payload). ``--device cpu`` runs a payload built for the host CPU the
same way (the tests' dry run).

Nothing of this repository is imported except the PyTorch model (step 3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

#: The spec's end-to-end thresholds (``tests/helpers.py``, ``bhvit_export/bundle/manifest.py``).
TOLERANCES = {"min_cosine": 0.9995, "max_abs_over_std": 0.05, "min_top1_agreement": 1.0}
#: A single op is compared tightly: float32 epilogues on exact integer popcounts (module tolerance).
OP_RTOL, OP_ATOL = 1e-5, 1e-5
#: Seconds a TensorRT engine build may need; skipped when less of the budget is left.
TRT_BUILD_S = 120
REPO = Path(__file__).resolve().parents[1]


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


class Budget:
    """The wall-clock budget of the whole check (the device machine is lent by the minute)."""

    def __init__(self, seconds: float) -> None:
        self.total, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)


class Skip(Exception):
    """A step that cannot run here (missing package, provider or file, or no time left)."""


def _latency(times_s: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * t for t in times_s)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "runs": len(ms)}


def _timed(fn: Callable[[], Any], sync: Callable[[], None], runs: int, warmup: int, budget: Budget) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        if budget.left() < 5:
            break
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    if not times:
        raise Skip("no time left to time it")
    return times


# --- the bundle, through the native runner ----------------------------------------------------------


def cudart_dirs() -> list[str]:
    """Folders holding ``libcudart.so.13`` (TVM's CUDA plugin links it) that the loader may not search:
    the CUDA toolkit beside ``nvcc``, ``/usr/local/cuda*``, and the ``nvidia`` wheels torch installs."""
    import glob
    import importlib.util
    import shutil

    roots = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    roots += sorted(glob.glob("/usr/local/cuda*"))
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        roots += list(spec.submodule_search_locations)
    found = []
    for root in roots:
        for lib in sorted(glob.glob(f"{root}/**/libcudart.so.13*", recursive=True)):
            folder = str(Path(lib).parent)
            if folder not in found:
                found.append(folder)
    return found


def _runner_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cuda":
        extra = cudart_dirs()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(extra + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    return env


def run_native(
    payload: Path, lib: Path, x: np.ndarray, device: str, budget: Budget, *, batch: int = 1, runs: int = 0, warmup: int = 0
) -> tuple[np.ndarray, list[float]]:
    """Run ``lib`` on ``x`` with ``runtime/bhvit-run``; (outputs, timed latencies in seconds)."""
    runner = payload / "runtime" / "bhvit-run"
    if not runner.is_file():
        raise FileNotFoundError(f"{runner} missing: build the payload with python -m bhvit_export.benchmarks.cuda_payload")
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(inp, np.ascontiguousarray(x, np.float32))
        cmd = [str(runner), str(lib), str(inp), str(out), "--batch", str(batch), "--runs", str(runs),
               "--warmup", str(warmup), "--device", device]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, budget.left()), env=_runner_env(device))
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["bhvit-run failed"])[-1])
        lat = json.loads(proc.stdout.strip().splitlines()[-1])["latency_ms"]
        return np.load(out), [v / 1e3 for v in lat]


def check_ops(payload: Path, device: str, budget: Budget) -> list[dict[str, Any]]:
    """Each single-op bundle against onnxruntime's result of the op's ONNX function body."""
    rows = []
    for folder in sorted(p for p in (payload / "ops").glob("*") if p.is_dir()):
        row: dict[str, Any] = {"op": folder.name}
        try:
            got, _ = run_native(payload, folder / "model.so", np.load(folder / "input.npy"), device, budget)
            want = np.load(folder / "expected.npy")
            row["max_abs"] = float(np.max(np.abs(got.reshape(want.shape) - want)))
            row["pass"] = bool(np.allclose(got.reshape(want.shape), want, rtol=OP_RTOL, atol=OP_ATOL))
        except Exception as err:  # one row per op, whatever failed
            row.update({"pass": False, "error": f"{type(err).__name__}: {err}"})
        rows.append(row)
    return rows


# --- peers -------------------------------------------------------------------------------------------


def torch_reference(payload: Path, x: np.ndarray, runs: int, warmup: int, budget: Budget, device: str = "cuda") -> tuple[np.ndarray, dict]:
    """The PyTorch model on ``device``, eager: (logits of every image, one at a time; latency)."""
    try:
        import torch
    except ImportError as err:
        raise Skip("torch is not installed") from err
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    ckpt = payload / "checkpoint.pth"
    if not ckpt.is_file():
        raise Skip("no checkpoint.pth in the payload")
    sys.path.insert(0, str(REPO))
    from bhvit_export.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).model.eval().to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        xs = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        logits = np.concatenate([model(xs[i : i + 1]).float().cpu().numpy() for i in range(len(xs))])
        times = _timed(lambda: model(xs[:1]), sync, runs, warmup, budget)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return logits, {"version": torch.__version__, "device": name, **_latency(times)}


def _ort_session(payload: Path, provider: str, options: dict):  # noqa: ANN202
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise Skip("onnxruntime is not installed") from err
    if provider not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no {provider} (installed: {', '.join(ort.get_available_providers())})")
    model = payload / "reference.onnx"
    if not model.is_file():
        raise Skip("no reference.onnx in the payload")
    fallback = ["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else []
    sess = ort.InferenceSession(str(model), providers=[(provider, options), *fallback])
    if sess.get_providers()[0] != provider:
        raise Skip(f"{provider} did not take the model (providers: {sess.get_providers()})")
    return ort, sess


def ort_run(
    payload: Path, provider: str, options: dict, x: np.ndarray, runs: int, warmup: int, budget: Budget, device: str = "cuda"
) -> tuple[np.ndarray, dict]:
    """onnxruntime with ``provider`` on the reference ONNX; timed with input and output bound on ``device``."""
    ort, sess = _ort_session(payload, provider, options)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    binding = sess.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x[:1]), device, 0))
    binding.bind_output(sess.get_outputs()[0].name, device, 0)
    times = _timed(lambda: sess.run_with_iobinding(binding), binding.synchronize_outputs, runs, warmup, budget)
    return logits, {"version": ort.__version__, "provider": provider, **_latency(times)}


def tensorrt_fp16(payload: Path, x: np.ndarray, runs: int, warmup: int, budget: Budget) -> tuple[np.ndarray, dict]:
    """TensorRT fp16 on the reference ONNX: onnxruntime's TensorRT provider, else the ``tensorrt`` module."""
    if budget.left() < TRT_BUILD_S:
        raise Skip(f"under {TRT_BUILD_S} s of budget left for an engine build")
    try:
        cache = tempfile.mkdtemp(prefix="trt-")
        opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
        return ort_run(payload, "TensorrtExecutionProvider", opts, x, runs, warmup, budget)
    except Skip as ort_skip:
        try:
            return _tensorrt_module(payload, x, runs, warmup, budget)
        except Skip as trt_skip:
            raise Skip(f"{ort_skip}; {trt_skip}") from None


def _tensorrt_module(payload: Path, x: np.ndarray, runs: int, warmup: int, budget: Budget) -> tuple[np.ndarray, dict]:
    """The ``tensorrt`` Python module (10.x API), device buffers from torch."""
    try:
        import tensorrt as trt
        import torch
    except ImportError as err:
        raise Skip(f"{err.name} is not installed") from err
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((payload / "reference.onnx").read_bytes()):
        raise RuntimeError(f"TensorRT cannot parse reference.onnx: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    one = (1,) + tuple(x.shape[1:])
    profile.set_shape(inp.name, one, one, one)
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    ctx = engine.create_execution_context()
    ctx.set_input_shape(inp.name, one)
    out_name = network.get_output(0).name
    xin = torch.empty(one, device="cuda")
    yout = torch.empty(tuple(ctx.get_tensor_shape(out_name)), device="cuda")
    ctx.set_tensor_address(inp.name, xin.data_ptr())
    ctx.set_tensor_address(out_name, yout.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream

    def call() -> None:
        ctx.execute_async_v3(stream)

    outs = []
    for i in range(len(x)):
        xin.copy_(torch.from_numpy(np.ascontiguousarray(x[i : i + 1])))
        call()
        torch.cuda.synchronize()
        outs.append(yout.float().cpu().numpy().copy())
    times = _timed(call, torch.cuda.synchronize, runs, warmup, budget)
    return np.concatenate(outs), {"version": trt.__version__, "provider": "tensorrt", **_latency(times)}


# --- the whole check -----------------------------------------------------------------------------------


def check(payload: Path, *, device: str = "cuda", budget_s: float = 300.0, runs: int = 50, warmup: int = 10) -> dict[str, Any]:
    """Every step in order; the report (``pass`` is the verdict, ``None`` if the bundle did not run)."""
    budget = Budget(budget_s)
    report: dict[str, Any] = {"payload": str(payload), "device": device, "budget_s": budget_s, "tolerances": TOLERANCES}
    if device == "cuda":
        report["cudart_dirs"] = cudart_dirs()
    info = payload / "payload.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        report["built"] = {k: meta.get(k) for k in ("fixture", "target", "tvm")}
    report["kernels"] = check_ops(payload, device, budget)
    bundle = payload / "bundle"
    x = np.load(bundle / "golden" / "inputs.npy").astype(np.float32)
    official = np.load(bundle / "golden" / "reference.npy")
    logits, lat = run_native(payload, bundle / "model.so", x, device, budget, runs=runs, warmup=warmup)
    logits = logits.reshape(official.shape)
    report["bundle"] = {"vs_official_cpu": metrics(logits, official), **_latency(lat)}
    peers: dict[str, Any] = {}
    reference: Optional[np.ndarray] = None
    ort_provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    torch_name = f"pytorch_{device}_eager"
    steps: list[tuple[str, Callable[[], tuple[np.ndarray, dict]]]] = [
        (torch_name, lambda: torch_reference(payload, x, runs, warmup, budget, device)),
        (f"onnxruntime_{device}", lambda: ort_run(payload, ort_provider, {}, x, runs, warmup, budget, device)),
    ]
    if device == "cuda":
        steps.append(("tensorrt_fp16", lambda: tensorrt_fp16(payload, x, runs, warmup, budget)))
    for name, step in steps:
        t0 = time.monotonic()
        try:
            if budget.left() < 10:
                raise Skip("the time budget is spent")
            out, row = step()
            out = out.reshape(official.shape)
            if name == torch_name:
                reference = out
                row["vs_official_cpu"] = metrics(out, official)
            elif reference is not None:
                row["vs_pytorch"] = metrics(out, reference)
        except Skip as why:
            row = {"skipped": str(why)}
        except Exception as err:  # a peer failing must not hide the bundle's result
            row = {"error": f"{type(err).__name__}: {err}"}
        row["step_s"] = round(time.monotonic() - t0, 1)
        peers[name] = row
    report["peers"] = peers
    kernels_ok = all(r["pass"] for r in report["kernels"])
    if reference is not None:
        m = metrics(logits, reference)
        report["bundle"]["vs_pytorch"] = m
        report["verdict_against"] = torch_name
        report["pass"] = kernels_ok and within(m, TOLERANCES)
    else:  # no PyTorch here (the dry run): the official logits are the reference
        report["verdict_against"] = "official_cpu_logits"
        report["pass"] = kernels_ok and within(report["bundle"]["vs_official_cpu"], TOLERANCES)
    report["elapsed_s"] = round(budget.total - budget.left(), 1)
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [f"payload {report['payload']} on {report['device']}: {'PASS' if report.get('pass') else 'FAIL'}"
             f" (bundle vs {report.get('verdict_against')}), {report.get('elapsed_s')} s"]
    lines.append(f"{'kernel':24} {'max|diff|':>10}  result")
    for r in report.get("kernels", []):
        lines.append(f"{r['op']:24} {r.get('max_abs', float('nan')):10.2e}  {'ok' if r['pass'] else r.get('error', 'MISMATCH')}")
    lines.append(f"{'system':24} {'median ms':>10} {'min ms':>8} {'cosine':>10} {'max/std':>8} {'top1':>5}")

    def row(name: str, r: dict[str, Any], vs: str) -> str:
        if "median_ms" not in r:
            return f"{name:24} {r.get('skipped') or r.get('error')}"
        m = r.get(vs) or r.get("vs_official_cpu") or {}
        return (f"{name:24} {r['median_ms']:10.3f} {r['min_ms']:8.3f} {m.get('cosine', float('nan')):10.6f} "
                f"{m.get('max_abs_over_std', float('nan')):8.4f} {m.get('top1_agreement', float('nan')):5.2f}")

    if "bundle" in report:
        lines.append(row("tvm bundle (packed)", report["bundle"], "vs_pytorch"))
    for name, r in report.get("peers", {}).items():
        lines.append(row(name, r, "vs_pytorch"))
    lines.append("(cosine, max/std, top1: vs PyTorch eager, else vs the official CPU logits; PyTorch: vs the official ones)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("payload", type=Path, help="folder made by python -m bhvit_export.benchmarks.cuda_payload")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the whole check")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: dry run of a CPU payload")
    p.add_argument("--save", type=Path, default=None, help="also write the JSON report here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    args = p.parse_args(argv)
    try:
        if not (args.payload / "bundle" / "model.so").is_file():
            raise FileNotFoundError(f"{args.payload}/bundle/model.so missing: build it with python -m bhvit_export.benchmarks.cuda_payload")
        report = check(args.payload, device=args.device, budget_s=args.budget_s, runs=args.runs, warmup=args.warmup)
        status = 0 if report["pass"] else 1
    except Exception as err:  # the bundle itself could not run: one line, exit 2
        report = {"payload": str(args.payload), "device": args.device, "pass": None, "error": f"{type(err).__name__}: {err}"}
        print(f"error: {report['error']}", file=sys.stderr)
        status = 2
    text = json.dumps(report, indent=2)
    if args.save is not None:
        tmp = args.save.with_name(args.save.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.save)
    print(text if args.json else (table(report) if status != 2 else text))
    return status


if __name__ == "__main__":
    sys.exit(main())
