"""Map the compiled model's functions back to ONNX nodes and model blocks, for ``verify --profile``.

TVM names a fused function after every op in it (``fused_reshape9_..._roll_..._subtract``, up to
1,500 characters) and keeps no link to the ONNX nodes. But our packed kernels are *anchors*: each
``bhvit`` ONNX node lowers to exactly one anchor kernel (a ``BinaryConv2d`` to ``bhvit_bconv_*``, a
``BinaryExpandPack`` to ``bhvit_expand_pack_*``, a ``BinaryLinear``/``PackedBinaryLinear`` to
``bhvit_bgemm_*``, ``BinaryAttentionScores`` to ``bhvit_scores_*``), and the VM runs them in the ONNX
graph's order. So the k-th anchor call is the k-th anchored ONNX node; every other call (the pack
that feeds a GEMM, the float norm/residual/shift code around it) is attributed to the next anchor's
node, whose input it computes; calls after the last anchor are the head. ``compile`` stores the
anchored nodes of the ONNX in the bundle (``layers.json``), so verify needs no ONNX.

If the anchor counts disagree (a graph the map does not understand), calls are left unattributed
rather than mislabelled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

LAYERS_FILE = "layers.json"
#: ONNX op type of a bhvit node -> the prefix of its one anchor kernel (ops without one: not anchored).
ANCHORS = {
    "BinaryConv2d": "bhvit_bconv_",
    "BinaryExpandPack": "bhvit_expand_pack_",
    "BinaryLinear": "bhvit_bgemm_",
    "PackedBinaryLinear": "bhvit_bgemm_",
    "BinaryAttentionScores": "bhvit_scores_",
}
ANCHOR_PREFIXES = tuple(sorted(set(ANCHORS.values())))
#: Op names with underscores, kept whole when a fused name is summarised.
MULTIWORD = ("strided_slice", "fast_erf", "fast_softmax", "expand_dims", "broadcast_to", "layer_norm",
             "greater_equal", "less_equal", "not_equal", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
             "resize2d", "fast_tanh", "fast_exp", "image_resize")
HEAD, STEM = "head", "stem"


def anchored_nodes(model: Any) -> list[dict[str, str]]:
    """``[{op, name, layer}]`` of the ONNX nodes that own an anchor kernel, in graph order."""
    from bhvit_export.passes.op_schema import DOMAIN

    return [{"op": n.op_type, "name": n.name, "layer": layer_name(n.name)}
            for n in model.graph.node if n.domain == DOMAIN and n.op_type in ANCHORS]


def write_layers(model: Any, path: Path) -> None:
    path.write_text(json.dumps({"version": 1, "anchored_nodes": anchored_nodes(model)}, indent=1), encoding="utf-8")


def read_layers(path: Path) -> Optional[list[dict[str, str]]]:
    if not path.is_file():
        return None
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))["anchored_nodes"]
        return [{"op": str(n["op"]), "name": str(n["name"]), "layer": str(n.get("layer") or n["name"])} for n in nodes]
    except (ValueError, KeyError, TypeError):
        return None


def layer_name(node_name: str) -> str:
    """``/vit/encoder/layerB.0/attention/attention/query/MatMul/BinaryLinear`` -> ``encoder.layerB.0.attention.attention.query``.

    torch.onnx names a node after its module path, then the op (``MatMul``), then what our passes
    appended (``BinaryLinear``): the path ends at the first ONNX or bhvit op name. Runs at compile
    time (onnx is there); the bundle stores the result.
    """
    import onnx.defs

    parts = [p for p in node_name.strip("/").split("/") if p]
    if parts and parts[0] == "vit":
        parts = parts[1:]
    keep = []
    for p in parts:
        if p in ANCHORS or p in ("Packed", "BinaryExpandPack") or onnx.defs.has(p):
            break
        keep.append(p)
    return ".".join(keep) or node_name


def block_name(layer: str) -> str:
    """The model block of a layer: ``encoder.layerB.0.attention.attention.query`` -> ``encoder.layerB.0``."""
    m = re.match(r"^(.*?\.\d+)(\.|$)", layer)
    return m.group(1) if m else layer


def short_function_name(name: str, width: int = 60) -> str:
    """A readable name: ours as is, a long fused one as its distinct op kinds."""
    if len(name) <= width:
        return name
    body = name.removeprefix("fused_")
    for i, w in enumerate(MULTIWORD):
        body = body.replace(w, f"\0{i}\0")
    kinds: list[str] = []
    for raw in re.split(r"_+", body):
        if re.fullmatch(r"[\dx]+|[a-z]\d+", raw):  # shapes (1x56x56x64) and parameters (a1, b55, g4)
            continue
        tok = re.sub(r"\d+$", "", re.sub(r"\0(\d+)\0", lambda m: MULTIWORD[int(m.group(1))], raw))
        if tok and tok not in kinds:
            kinds.append(tok)
    text = "fused " + "+".join(kinds)
    return text if len(text) <= width else text[: width - 3] + "..."


def attribute(calls: list[tuple[str, float]], nodes: Optional[list[dict[str, str]]]) -> list[Optional[str]]:
    """The layer of each call (None for all when the map does not fit this model)."""
    if not nodes:
        return [None] * len(calls)
    anchor_idx = [i for i, (n, _) in enumerate(calls) if n.startswith(ANCHOR_PREFIXES)]
    if len(anchor_idx) != len(nodes) or any(
        not calls[i][0].startswith(ANCHORS[node["op"]]) for i, node in zip(anchor_idx, nodes)
    ):
        return [None] * len(calls)
    out: list[Optional[str]] = []
    k = 0
    for i, (name, _) in enumerate(calls):
        while k < len(anchor_idx) and anchor_idx[k] < i:
            k += 1
        if k == len(anchor_idx):
            out.append(HEAD)
        elif k == 0 and not name.startswith("bhvit_"):  # the patch embedding before the first binary layer
            out.append(STEM)
        else:
            out.append(nodes[k].get("layer") or nodes[k]["name"])
    return out


def profile_rows(calls: list[tuple[str, float]], nodes: Optional[list[dict[str, str]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-function rows with their layers, per-block rows), both slowest first."""
    layers = attribute(calls, nodes)
    funcs: dict[str, dict[str, Any]] = {}
    blocks: dict[str, dict[str, Any]] = {}
    for (name, ms), layer in zip(calls, layers):
        f = funcs.setdefault(name, {"name": name, "short": short_function_name(name), "ms": 0.0, "calls": 0, "layers": []})
        f["ms"] += ms
        f["calls"] += 1
        if layer is not None and layer not in f["layers"]:
            f["layers"].append(layer)
        if layer is not None:
            b = blocks.setdefault(block_name(layer), {"block": block_name(layer), "ms": 0.0, "calls": 0})
            b["ms"] += ms
            b["calls"] += 1
    rows = sorted(funcs.values(), key=lambda r: -r["ms"])
    for r in rows:
        r["ms"] = round(r["ms"], 4)
    brows = sorted(blocks.values(), key=lambda r: -r["ms"])
    for b in brows:
        b["ms"] = round(b["ms"], 4)
    return rows, brows


def format_profile(rows: list[dict[str, Any]], blocks: Optional[list[dict[str, Any]]], top: int = 15) -> list[str]:
    """The text of ``verify --profile``: slowest functions with their layers, then time per block."""
    total = sum(r["ms"] for r in rows) or 1.0
    out = [f"slowest compiled functions ({total:.2f} ms in {len(rows)} functions; ms per run, % , calls, layers):"]
    for r in rows[:top]:
        where = ", ".join(r.get("layers", [])[:2]) + (f" +{len(r['layers']) - 2} more" if len(r.get("layers", [])) > 2 else "")
        out.append(f"  {r['ms']:8.3f} {100 * r['ms'] / total:5.1f}% x{r['calls']:<3d} {r.get('short', r['name'])}"
                   + (f"  [{where}]" if where else ""))
    if blocks:
        out.append("time per model block (ms per run, %, calls):")
        out += [f"  {b['ms']:8.3f} {100 * b['ms'] / total:5.1f}% x{b['calls']:<3d} {b['block']}" for b in blocks[:top]]
    return out
