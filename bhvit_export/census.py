"""Op census and cost of an ONNX model: what ``bhvit-export inspect`` reports.

Costs follow the paper's Table 2 convention (from ReActNet): ``OPs = BOPs / 64 + FLOPs`` where
FLOPs are the multiply-accumulates of the float Conv/MatMul/Gemm layers and BOPs the binary
multiply-accumulates. Counted for one 224x224 image. Each ``bhvit`` op's BOPs are its schema
entry's cost (:mod:`bhvit_export.passes.op_schema`): QD's and GSB's ``P.V`` count as three binary products (one
per mask) and the attention-score ``Q.K^T`` as one.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
from onnx import shape_inference

from bhvit_export.passes.op_schema import DOMAIN as BINARY_DOMAIN
from bhvit_export.passes.op_schema import schema_of

from .errors import ModelFileError

FLOAT_MAC_OPS = ("Conv", "MatMul", "Gemm")

#: The paper's Table 2 (ImageNet-1K): size in MB and OPs, for the configs it reports.
PAPER_TABLE2: dict[str, dict[str, float | None]] = {
    "tiny-fp-downsampling": {"size_mb": 2.5, "ops": 1.1e8},
    "small-fp-downsampling": {"size_mb": 3.5, "ops": 1.5e8},
    "tiny": {"size_mb": None, "ops": 0.5e8},
    "small": {"size_mb": None, "ops": 0.8e8},
}


@dataclass
class Census:
    """Everything ``inspect`` prints."""

    file_bytes: int
    ops: dict[str, int]
    binary_ops: dict[str, int]
    bops: int
    flops: int
    other_float_elementwise: int
    binary_params: int
    float_params: int
    per_op_cost: list[dict[str, Any]] = field(default_factory=list)
    paper: dict[str, Any] | None = None

    @property
    def total_ops(self) -> float:
        return self.bops / 64 + self.flops

    @property
    def packed_bytes(self) -> int:
        """Size of the weights as deployed: 1 bit per binary weight, 4 bytes per float."""
        return self.binary_params // 8 + 4 * self.float_params

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_ops"] = self.total_ops
        d["packed_bytes"] = self.packed_bytes
        return d


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, mapping every failure to one ModelFileError line."""
    from .limits import file_kind

    p = Path(path)
    kind = file_kind(p)
    if kind == "missing":
        raise ModelFileError(f"no such file: {p}")
    if kind is not None:  # /dev/zero never ends and a FIFO blocks the reader: regular files only
        raise ModelFileError(f"{p} is {kind}, expected an ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises DecodeError; onnx a ValidationError for external data
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelFileError(f"{p} is not an ONNX model ({e.__class__.__name__}{': ' + why if why else ''})") from None
    if not model.graph.node:
        raise ModelFileError(f"{p} is not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelFileError(f"{p} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    _check_dims(model, p)
    from .op_attributes import check_bhvit_nodes

    check_bhvit_nodes(model, p)
    return model


def _check_dims(model: onnx.ModelProto, p: Path) -> None:
    """Refuse negative dimensions, which onnx.checker lets through (they make costs negative and
    shape inference or TVM fail far from the cause)."""
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in vi.type.tensor_type.shape.dim]
        if any(isinstance(d, int) and d < 0 for d in dims):
            raise ModelFileError(f"{p}: '{vi.name}' has a negative dimension {dims}")
    for init in model.graph.initializer:
        if any(d < 0 for d in init.dims):
            raise ModelFileError(f"{p}: initializer '{init.name}' has a negative dimension {list(init.dims)}")


def _static_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    return shape_inference.infer_shapes(m, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


Shape = Callable[[str], tuple[int, ...]]
#: Float ops that only move or reshape data: not counted among the other float ops.
_DATA_MOVEMENT = ("Constant", "Reshape", "Transpose", "Slice", "Concat", "Unsqueeze", "Shape")


def _shape_of(shapes: dict[str, tuple[int, ...]], foreign: list[str]) -> Shape:
    """``name -> static shape``, a ModelFileError naming the likely cause where inference gave none."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            why = f"ops outside ONNX and bhvit ({', '.join(foreign)}) hide it" if foreign else "is the input 1x3x224x224?"
            raise ModelFileError(f"cannot infer the shape of '{name}': {why}")
        return shapes[name]

    return shape


def _binary_cost(n: onnx.NodeProto, shape: Shape) -> tuple[int, str | None, int]:
    """(BOPs, the packed weight input or None, binary weights) of one ``bhvit`` node, from its op
    schema entry (:mod:`bhvit_export.passes.op_schema`); an unknown bhvit op costs nothing here
    (compile refuses it, inspect names it)."""
    schema = schema_of(n.op_type, n.domain)
    if schema is None:
        return 0, None, 0
    cost = schema.cost(n, shape)
    return cost.bops, cost.weights, cost.binary_params


def _float_macs(n: onnx.NodeProto, shape: Shape) -> int:
    """Multiply-accumulates of a float Conv/MatMul/Gemm node."""
    out = shape(n.output[0])
    w = shape(n.input[1])
    if n.op_type == "Conv":
        k = math.prod(w[1:])
    elif n.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        k = w[1] if trans_b else w[0]
    else:
        k = shape(n.input[0])[-1]
    return math.prod(out) * k


def _float_params(m: onnx.ModelProto, binary_inputs: set[str]) -> int:
    """Float weights: the float initializers that are not packed binary weights, and Constant nodes."""
    count = sum(
        math.prod(i.dims) for i in m.graph.initializer
        if i.name not in binary_inputs and i.data_type == onnx.TensorProto.FLOAT
    )
    # The torch exporter writes folded weights as Constant nodes rather than initializers.
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    count += math.prod(a.t.dims)
    return count


def census(model: onnx.ModelProto, file_bytes: int = 0) -> Census:
    """Count ops, BOPs, FLOPs and parameters of ``model`` at batch 1."""
    m = _static_batch(model)
    shapes = _shapes(m)
    # ops of a foreign domain are named with it, so that e.g. ``evil.Exec`` does not pass for a standard op
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx", BINARY_DOMAIN) else f"{n.domain}.{n.op_type}" for n in m.graph.node)
    binary_ops = Counter(n.op_type for n in m.graph.node if n.domain == BINARY_DOMAIN)
    shape = _shape_of(shapes, sorted(k for k in ops if "." in k))
    bops = flops = other = binary_params = 0
    binary_inputs: set[str] = set()
    per_op: list[dict[str, Any]] = []
    for n in m.graph.node:
        cost_b = cost_f = 0
        if n.domain == BINARY_DOMAIN:
            cost_b, weights, params = _binary_cost(n, shape)
            binary_params += params
            if weights is not None:
                binary_inputs.add(weights)
        elif n.op_type in FLOAT_MAC_OPS:
            cost_f = _float_macs(n, shape)
        elif n.op_type not in _DATA_MOVEMENT and n.output and n.output[0] in shapes:
            other += math.prod(shapes[n.output[0]])
        if cost_b or cost_f:
            per_op.append({"node": n.name, "op": n.op_type, "bops": cost_b, "flops": cost_f})
        bops += cost_b
        flops += cost_f
    return Census(
        file_bytes=file_bytes,
        ops=dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        binary_ops=dict(binary_ops),
        bops=bops,
        flops=flops,
        other_float_elementwise=other,
        binary_params=binary_params,
        float_params=_float_params(m, binary_inputs),
        per_op_cost=per_op,
    )


def paper_row(model: onnx.ModelProto) -> str | None:
    """Which Table 2 row this model is, read from the metadata ``to-onnx`` writes."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get("bhvit.paper_config")


def inspect_file(path: str | Path) -> Census:
    model = load_onnx(path)
    c = census(model, Path(path).stat().st_size)
    row = paper_row(model)
    if row in PAPER_TABLE2:
        ref = PAPER_TABLE2[row]
        c.paper = {
            "row": row,
            "paper_size_mb": ref["size_mb"],
            "paper_ops": ref["ops"],
            "ours_size_mb": c.packed_bytes / 1e6,
            "ours_ops": c.total_ops,
        }
    return c


def op_schemas(c: Census) -> dict[str, Any]:
    """The schema entries (:mod:`bhvit_export.passes.op_schema`) of the ``bhvit`` ops the model uses, as JSON."""
    return {op: schema.to_json() for op in c.binary_ops if (schema := schema_of(op)) is not None}


def format_op_schemas(c: Census) -> str:
    """``inspect --ops``: each ``bhvit`` op the model uses, its named inputs, attributes and cost."""
    entries = [schema.describe() for op in c.binary_ops if (schema := schema_of(op)) is not None]
    return "\n".join(entries) if entries else "bhvit ops       none (a reference graph)"


def format_report(c: Census) -> str:
    """The human table ``inspect`` prints (``--json`` prints ``Census.to_json()`` instead)."""
    lines = [
        f"file size        {c.file_bytes / 1e6:10.2f} MB",
        f"weights packed   {c.packed_bytes / 1e6:10.2f} MB  ({c.binary_params:,} binary weights at 1 bit, "
        f"{c.float_params:,} float at 4 bytes)",
        f"BOPs             {c.bops:14.4g}",
        f"FLOPs            {c.flops:14.4g}  (float Conv/MatMul/Gemm MACs)",
        f"OPs              {c.total_ops:14.4g}  (BOPs/64 + FLOPs, the paper's measure)",
        f"other float ops  {c.other_float_elementwise:14.4g}  (elementwise/norm/pool outputs, not in OPs)",
        "ops              " + ", ".join(f"{k} {v}" for k, v in c.ops.items() if k != "Constant"),
        "binary ops       " + (", ".join(f"{k} {v}" for k, v in c.binary_ops.items()) or "none (a reference graph)"),
    ]
    if c.paper:
        p = c.paper
        size = f"{p['paper_size_mb']} MB" if p["paper_size_mb"] is not None else "n/a"
        lines += [
            f"paper Table 2    BHViT-{p['row']}: size {size}, OPs {p['paper_ops']:.2g}",
            f"ours             size {p['ours_size_mb']:.2f} MB, OPs {p['ours_ops']:.3g}  (see docs/inspect.md)",
        ]
    return "\n".join(lines)
