"""Per official fixture, per stage, the end-to-end metrics against the official logits.

Stages: torch (our PyTorch model), ORT reference (the float reference ONNX), ORT fused (the fused
``bhvit`` ONNX, function bodies), TVM x86_64 (a compiled bundle, Relax VM), and with ``--aarch64``
the aarch64 bundle's native runner under qemu. Input sets: ``inputs`` (standard normal) and
``inputs_structured``; where a fixture ships no ``logits_structured.npy`` (micro, micro-binary-embed)
the structured images of micro-gsb are compared against *our torch model's* logits instead, and the
row says so. One compile per fixture and target.

    python scripts/fixture_metrics.py [--fixtures micro,micro-gsb] [--aarch64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import OFFICIAL, OFFICIAL_NAMES, compare_end_to_end  # noqa: E402


def _sets(folder: Path, torch_model) -> list[tuple[str, np.ndarray, np.ndarray, str]]:  # noqa: ANN001
    import torch

    out = [("inputs", np.load(folder / "inputs.npy"), np.load(folder / "logits.npy"), "official")]
    if (folder / "logits_structured.npy").is_file():
        out.append(("inputs_structured", np.load(folder / "inputs_structured.npy"), np.load(folder / "logits_structured.npy"), "official"))
    else:
        x = np.load(OFFICIAL / "micro-gsb" / "inputs_structured.npy")
        with torch.no_grad():
            out.append(("inputs_structured", x, torch_model(torch.from_numpy(x)).numpy(), "our torch"))
    return out


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]


def measure(name: str, work: Path, aarch64: bool) -> list[dict]:
    import torch

    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.compile import compile_model
    from bhvit_export.export.convert import convert_checkpoint

    folder = OFFICIAL / name
    ck, cfg = folder / "checkpoint.pth", folder / "config.json"
    model = load_checkpoint(ck, config_json=cfg).model.freeze()
    ref_onnx, fused_onnx = work / f"{name}-ref.onnx", work / f"{name}.onnx"
    convert_checkpoint(ck, ref_onnx, reference=True, config_json=cfg)
    convert_checkpoint(ck, fused_onnx, reference=False, config_json=cfg)
    sets = _sets(folder, model)
    runs = {
        "torch": lambda x: model(torch.from_numpy(x)).detach().numpy(),
        "ORT reference": lambda x: _ort(ref_onnx, x),
        "ORT fused": lambda x: _ort(fused_onnx, x),
    }
    import tvm

    x86 = work / f"{name}-x86_64"
    compile_model(fused_onnx, x86, target="x86_64", golden_inputs=folder / "inputs.npy",
                  golden_outputs=folder / "logits.npy", native=False)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(x86 / "model.so")), tvm.cpu())
    runs["TVM x86_64"] = lambda x: np.concatenate([vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))])
    if aarch64:
        from bhvit_export.bundle import manifest as mf
        from bhvit_export.verify.runners import NativeRunner

        arm = work / f"{name}-aarch64"
        compile_model(fused_onnx, arm, target="aarch64", golden_inputs=folder / "inputs.npy", golden_outputs=folder / "logits.npy")
        runner = NativeRunner(arm, mf.check_bundle(arm))
        runs["aarch64 (qemu)"] = runner.run
    rows = []
    for stage, fn in runs.items():
        for set_name, x, want, against in sets:
            with torch.no_grad():
                got = fn(x)
            m = compare_end_to_end(got, want)
            rows.append({"fixture": name, "stage": stage, "inputs": set_name, "against": against, **m})
            print(f"{name:20s} {stage:15s} {set_name:18s} vs {against:9s} cos {m['cosine']:.7f}  "
                  f"max|d|/std {m['rel_std']:.5f}  top-1 {m['top1_agree']:.0%}", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default=",".join(OFFICIAL_NAMES))
    ap.add_argument("--aarch64", action="store_true", help="also an aarch64 bundle's native runner under qemu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fixture-metrics-") as tmp:
        for name in a.fixtures.split(","):
            rows += measure(name, Path(tmp), a.aarch64)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print("| fixture | stage | inputs | vs | cosine | max abs diff / std | top-1 |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['fixture']} | {r['stage']} | {r['inputs']} | {r['against']} | {r['cosine']:.7f} | {r['rel_std']:.5f} | {r['top1_agree']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
