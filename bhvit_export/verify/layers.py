"""Teacher-forced block-level check of an exported model (``bhvit-export verify-layers``).

End to end, a numerically chaotic reference (random or badly conditioned weights) amplifies one
tie-level sign flip into a visible logit change, so logits alone cannot tell a real bug from
rounding. Block by block it can: each block (``vit.embeddings``, ``vit.encoder.layerA.i``,
``patch_embedK``, ``layerB.i``) is cut out of the ONNX graph (its nodes carry the module path),
fed the *reference's* input to that block, and its output is compared with the reference's
output of that block. A flip inside one block moves that block's output a little; a wrong eps,
padding, threshold or kernel moves it a lot, and the first block that fails names the culprit.

The reference activations come from the official fixtures' ``intermediates/`` (first image) or
from our PyTorch model run on the golden images (``--checkpoint``). Blocks run in onnxruntime
(the ONNX, function bodies included) or in TVM on this CPU (the packed kernels). The per-block
criterion is the spec's end-to-end one applied to the block output (cosine >= 0.9995, max |diff|
<= 5% of its std); the spec's tight module bound (1e-5 of scale) is reported beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ModelFileError

#: ONNX node names carry the module path: ``/vit/encoder/layerB.0/attention/...``.
_BLOCK = re.compile(r"^/vit/(embeddings|encoder/(?:layer[AB]\.\d+|patch_embed\d))/")
MIN_COSINE = 0.9995
MAX_ABS_OVER_STD = 0.05
TIGHT = 1e-5


@dataclass(frozen=True)
class Block:
    """One block of the graph: its module path and its single input and output tensors."""

    name: str
    input: str
    output: str


def _module(node_name: str) -> Optional[str]:
    m = _BLOCK.match(node_name)
    return None if m is None else "vit." + m.group(1).replace("/", ".")


def find_blocks(proto: Any) -> list[Block]:
    """The blocks of ``proto`` in graph order, each with exactly one tensor in and one out."""
    inits = {i.name for i in proto.graph.initializer}
    inits |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}  # shared constants
    owner: dict[str, Optional[str]] = {i.name: None for i in proto.graph.input}
    order: list[str] = []
    for n in proto.graph.node:
        b = _module(n.name)
        if b is not None and b not in order:
            order.append(b)
        for o in n.output:
            owner[o] = b
    ins: dict[str, set[str]] = {b: set() for b in order}
    outs: dict[str, set[str]] = {b: set() for b in order}
    graph_outputs = {o.name for o in proto.graph.output}
    for n in proto.graph.node:
        b = _module(n.name)
        for t in n.input:
            if not t or t in inits or t not in owner or owner[t] == b:
                continue
            src = owner[t]
            if b is not None:
                ins[b].add(t)
            if src is not None:
                outs[src].add(t)
    for t in graph_outputs:
        if owner.get(t) in outs:
            outs[owner[t]].add(t)  # type: ignore[index]
    bad = [f"{b} ({len(ins[b])} inputs, {len(outs[b])} outputs)" for b in order if len(ins[b]) != 1 or len(outs[b]) != 1]
    if bad:
        raise ModelFileError(f"blocks that do not have one input and one output tensor: {', '.join(bad)}")
    return [Block(b, next(iter(ins[b])), next(iter(outs[b]))) for b in order]


def extract_block(proto: Any, block: Block) -> Any:
    """The sub-model computing ``block.output`` from ``block.input`` (functions and opsets kept)."""
    import onnx
    from onnx.utils import Extractor

    sub = Extractor(proto).extract_model([block.input], [block.output])
    del sub.functions[:]
    sub.functions.extend(proto.functions)
    del sub.opset_import[:]
    sub.opset_import.extend(proto.opset_import)
    sub.ir_version = proto.ir_version
    return onnx.shape_inference.infer_shapes(sub)


def activations_from_intermediates(folder: Path, blocks: list[Block]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``block -> (input, output)`` from an official fixture (``intermediates/index.json``; first image)."""
    index = folder / "intermediates" / "index.json"
    if not index.is_file():
        raise ModelFileError(f"--intermediates {folder}: no intermediates/index.json there")
    files = {e["module"]: folder / e["file"] for e in json.loads(index.read_text())["entries"] if e["what"] in ("output", "output[0]")}
    acts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    prev: Optional[np.ndarray] = np.load(folder / "inputs.npy")[:1] if (folder / "inputs.npy").is_file() else None
    for b in blocks:
        out = np.load(files[b.name]) if b.name in files else None
        if prev is not None and out is not None:
            acts[b.name] = (prev, out)
        prev = out
    return acts


def activations_from_model(model: Any, blocks: list[Block], x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``block -> (input, output)`` of our PyTorch model (frozen, eval) on ``x``, by forward hooks."""
    import torch

    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hooks = []
    for b in blocks:
        mod = model.get_submodule(b.name)

        def hook(_m, inp, out, name=b.name):  # noqa: ANN001, ANN202
            seen[name] = (inp[0].detach().numpy().copy(), out.detach().numpy().copy())

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _ort_runner(sub: Any) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _tvm_runner(sub: Any) -> Callable[[np.ndarray], np.ndarray]:
    import tvm

    from bhvit_export.targets.build import build
    from bhvit_export.targets.importer import import_fused
    from bhvit_export.targets.kernels.target_info import host_target

    target = host_target()
    vm = tvm.runtime.vm.VirtualMachine(build(import_fused(sub, batch=1, target=target), target), tvm.cpu())

    def run(x: np.ndarray) -> np.ndarray:
        outs = [vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i : i + 1]))) for i in range(len(x))]
        return np.concatenate([(o if hasattr(o, "numpy") else o[0]).numpy() for o in outs])

    return run


@dataclass
class LayersReport:
    """Per-block numbers and the decision (every block within the per-block tolerance)."""

    model: str
    engine: str
    source: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.blocks) and all(b["passed"] for b in self.blocks)

    @property
    def first_failure(self) -> Optional[str]:
        return next((b["block"] for b in self.blocks if not b["passed"]), None)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "model": self.model, "engine": self.engine, "reference": self.source,
                "first_failing_block": self.first_failure, "blocks": self.blocks}

    def lines(self) -> list[str]:
        out = [f"{self.model}: blocks teacher-forced on {self.engine}, reference activations from {self.source}"]
        for b in self.blocks:
            out.append(
                f"{'PASS' if b['passed'] else 'FAIL'}  {b['block']:26s} cosine {b['cosine']:.7f}  max |diff| "
                f"{b['max_abs_over_std']:.3%} of std  ({b['max_abs_over_scale']:.2g} of scale"
                f"{', tight' if b['tight'] else ''})"
            )
        if self.first_failure:
            out.append(f"first failing block: {self.first_failure}")
        out.append("PASSED" if self.passed else "FAILED")
        return out


def compare_block(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    g, r = got.astype(np.float64).reshape(len(got), -1), ref.astype(np.float64).reshape(len(ref), -1)
    diff = float(np.abs(g - r).max()) if g.size else 0.0
    std = float(r.std()) or 1.0
    scale = max(1.0, float(np.abs(r).max()))
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    cos = float(np.min(np.where(norms > 0, (g * r).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)))
    ok = bool(np.isfinite(g).all()) and cos >= MIN_COSINE and diff / std <= MAX_ABS_OVER_STD
    return {"cosine": cos, "max_abs_over_std": diff / std, "max_abs_over_scale": diff / scale,
            "tight": diff <= TIGHT * scale, "passed": ok}


def verify_layers(
    model_path: Path,
    *,
    intermediates: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    config_json: Optional[Path] = None,
    engine: str = "onnxruntime",
    progress: Optional[Callable[[str], None]] = None,
) -> LayersReport:
    """Cut ``model_path`` into blocks and check each, teacher-forced, against the reference."""
    from ..census import load_onnx

    say = progress or (lambda _m: None)
    if (intermediates is None) == (checkpoint is None):
        raise ModelFileError("give exactly one of --intermediates DIR and --checkpoint CKPT")
    proto = load_onnx(model_path)
    blocks = find_blocks(proto)
    if not blocks:
        raise ModelFileError(f"{model_path}: no BHViT blocks found (node names lack the /vit/... module paths)")
    if intermediates is not None:
        acts = activations_from_intermediates(intermediates, blocks)
        source = f"official intermediates {intermediates} (first image)"
    else:
        from ..checkpoint import load_checkpoint
        from ..golden import DEFAULT_COUNT, DEFAULT_SEED, RECIPE, recipe_inputs

        model = load_checkpoint(checkpoint, config_json=config_json).model.freeze()
        x = recipe_inputs(RECIPE, DEFAULT_COUNT, int(model.config.image_size), DEFAULT_SEED)
        acts = activations_from_model(model, blocks, x)
        source = f"PyTorch model of {checkpoint} on the {len(x)} golden images"
    report = LayersReport(model=str(model_path), engine=engine, source=source)
    make = {"onnxruntime": _ort_runner, "tvm": _tvm_runner}[engine]
    for b in blocks:
        if b.name not in acts:
            continue
        say(f"block {b.name} on {engine}")
        x_in, want = acts[b.name]
        got = make(extract_block(proto, b))(np.ascontiguousarray(x_in, np.float32))
        if got.shape != want.shape:
            raise ModelFileError(f"block {b.name}: output {list(got.shape)}, reference {list(want.shape)}")
        report.blocks.append({"block": b.name, **compare_block(got, want)})
    return report
