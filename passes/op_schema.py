"""One schema entry per ``bhvit`` op: its domain, named inputs, attributes, function body and cost.

Everything that reads or writes a ``bhvit`` node goes through its entry here, so adding an op or an
input is one edit: the passes build nodes with :func:`OpSchema.positional` and
:func:`OpSchema.attributes`, the TVM converters and the census read inputs by name with
:func:`OpSchema.named`, ``inspect``/``compile`` validate files with :func:`OpSchema.validate`, and
``inspect --ops`` prints the entries. The function bodies (the executable spec) stay in
:mod:`bhvit_export.passes.ops`; an entry's inputs, outputs and attribute names must be exactly its body's, which
:func:`check_against_bodies` checks (a test runs it).

Core layer: numpy and onnx only (no torch, no TVM, no graphsurgeon), so validating or costing a
fused file never loads a compiler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import onnx
import onnx.parser

from bhvit_export.errors import ModelFileError

from .ops import (
    BINARY_ATTENTION_SCORES,
    BINARY_CONV2D,
    BINARY_EXPAND_PACK,
    BINARY_LINEAR,
    DOMAIN,
    DOMAIN_VERSION,
    GSB_ATTENTION_CONTEXT,
    ONNX_OPSET,
    PACKED_BINARY_LINEAR,
    QD_ATTENTION_CONTEXT,
)

__all__ = ["DOMAIN", "DOMAIN_VERSION", "ONNX_OPSET", "SCHEMAS", "OP_TYPES", "OpSchema", "OpSchemaError", "schema_of"]

T = TypeVar("T")

FLOAT, INT, INTS = onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT, onnx.AttributeProto.INTS
_TYPE_NAMES = {FLOAT: "FLOAT", INT: "INT", INTS: "INTS"}
#: Largest integer attribute accepted: a feature count or kernel beyond it is not a BHViT layer, and
#: products of such values are what the census and the kernels compute with.
MAX_ATTRIBUTE_INT = 1 << 24


class OpSchemaError(ModelFileError):
    """A ``bhvit`` node that does not fit its op's schema (a damaged, hand-edited or foreign file)."""


@dataclass(frozen=True)
class Input:
    """One named input of an op (position = its index in :attr:`OpSchema.inputs`)."""

    name: str
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Attribute:
    """One attribute: its ONNX type, and the values our kernels accept (``length`` for INTS)."""

    name: str
    type: int
    doc: str
    minimum: int = 1
    length: Optional[int] = None

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES[self.type]

    def coerce(self, value: Any) -> Any:
        """``value`` as the Python type an ONNX attribute of :attr:`type` is written from."""
        if self.type == INTS:
            return [int(v) for v in value]
        return int(value) if self.type == INT else float(value)

    def bad_value(self, attr: onnx.AttributeProto) -> Optional[str]:
        """The out-of-range value of ``attr`` as text, or None when it is fine."""
        if attr.type == INT:
            return None if self.minimum <= attr.i <= MAX_ATTRIBUTE_INT else f"{attr.i}"
        if attr.type == INTS:
            ok = len(attr.ints) == self.length and all(self.minimum <= v <= MAX_ATTRIBUTE_INT for v in attr.ints)
            return None if ok else str(list(attr.ints))
        if attr.type == FLOAT:
            return None if math.isfinite(attr.f) and attr.f > 0 else f"{attr.f}"
        return None


@dataclass(frozen=True)
class Call:
    """One node of an op, read by name: tensor names of its inputs and outputs, its attribute values."""

    op: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class OpCost:
    """What one call costs (the census's convention: ``OPs = BOPs / 64 + FLOPs``)."""

    bops: int
    #: Binary weights the call reads (1 bit each when deployed), and the input holding them.
    binary_params: int = 0
    weights: Optional[str] = None


Shape = Callable[[str], tuple[int, ...]]


@dataclass(frozen=True)
class OpSchema:
    """A ``bhvit`` op: what its node looks like, what it computes (the body) and what it costs."""

    name: str
    doc: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    attrs: tuple[Attribute, ...]
    #: The ONNX function (opset 18 ops) that is the op's semantics; see :mod:`bhvit_export.passes.ops`.
    body: str
    #: ``cost(call, shape)``: BOPs per call from the static shapes (``shape(tensor_name)``).
    cost_fn: Callable[[Call, Shape], OpCost] = field(repr=False)
    cost_doc: str = ""
    domain: str = DOMAIN
    version: int = DOMAIN_VERSION

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def required_inputs(self) -> int:
        return sum(not i.optional for i in self.inputs)

    def function_proto(self) -> onnx.FunctionProto:
        return onnx.parser.parse_function(self.body)

    def named(self, values: Sequence[T], what: str = "") -> dict[str, Optional[T]]:
        """``values`` (a node's inputs in order: tensor names, graphsurgeon tensors, Relax exprs) by name.

        A missing or empty required input raises :class:`OpSchemaError` naming it; a missing
        optional one reads as None.
        """
        what = what or f"{self.name} node"
        if len(values) > len(self.inputs):
            raise OpSchemaError(f"{what} has {len(values)} inputs, {self.name} takes {len(self.inputs)} ({', '.join(self.input_names)})")
        out: dict[str, Optional[T]] = {}
        for i, inp in enumerate(self.inputs):
            v = values[i] if i < len(values) else None
            if v is None or (isinstance(v, str) and not v):
                if not inp.optional:
                    raise OpSchemaError(f"{what} lacks its input '{inp.name}' (input {i + 1} of {self.name}: {', '.join(self.input_names)})")
                v = None
            out[inp.name] = v
        return out

    def positional(self, values: Mapping[str, T]) -> list[T]:
        """The inputs of a new node in the op's order, from ``{input name: value}`` (what the passes write)."""
        unknown = sorted(set(values) - set(self.input_names))
        if unknown:
            raise ValueError(f"{self.name} has no input {', '.join(unknown)} (inputs: {', '.join(self.input_names)})")
        missing = [i.name for i in self.inputs if not i.optional and values.get(i.name) is None]
        if missing:
            raise ValueError(f"{self.name} needs its input {', '.join(missing)}")
        n = max(k for k, i in enumerate(self.inputs) if values.get(i.name) is not None) + 1
        return [values[i.name] for i in self.inputs[:n]]

    def attributes(self, **values: Any) -> dict[str, Any]:
        """A new node's attributes in the op's order and types (every attribute is required)."""
        names = {a.name for a in self.attrs}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{self.name} has no attribute {', '.join(unknown)}")
        missing = [a.name for a in self.attrs if a.name not in values]
        if missing:
            raise ValueError(f"{self.name} needs its attribute {', '.join(missing)}")
        return {a.name: a.coerce(values[a.name]) for a in self.attrs}

    def call(self, node: onnx.NodeProto) -> Call:
        """``node`` read by name (validate it first: :meth:`validate`)."""
        ins = self.named(list(node.input), f"{self.name} node '{node.name}'")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return Call(self.name, {k: v for k, v in ins.items() if v is not None}, dict(zip(self.outputs, node.output)), attrs)

    def cost(self, node: onnx.NodeProto, shape: Shape) -> OpCost:
        """BOPs (and binary weights) of one call of ``node`` given the static ``shape`` of its tensors."""
        return self.cost_fn(self.call(node), shape)

    def validate(self, node: onnx.NodeProto, what: str) -> None:
        """Raise :class:`OpSchemaError` (prefixed with ``what``) if ``node`` does not fit this op."""
        n_in, n_out = len(self.inputs), len(self.outputs)
        if len(node.input) > n_in or len(node.output) != n_out or not all(node.output):
            raise OpSchemaError(
                f"{what} has {len(node.input)} inputs and {len(node.output)} outputs, expected {n_in} and {n_out}"
                f" ({', '.join(self.input_names)} -> {', '.join(self.outputs)})"
            )
        self.named(list(node.input), what)  # a missing or empty required input, by name
        attrs = {a.name: a for a in node.attribute}
        for spec in self.attrs:
            if spec.name not in attrs:
                raise OpSchemaError(f"{what} lacks its attribute '{spec.name}'")
            attr = attrs[spec.name]
            if attr.type != spec.type:
                raise OpSchemaError(f"{what}: attribute '{spec.name}' is of type {attr.type}, expected {spec.type_name}")
            bad = spec.bad_value(attr)
            if bad is not None:
                raise OpSchemaError(f"{what}: attribute '{spec.name}' is {bad}, out of range")

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "version": self.version,
            "doc": self.doc,
            "inputs": [{"name": i.name, "optional": i.optional, "doc": i.doc} for i in self.inputs],
            "outputs": list(self.outputs),
            "attributes": [{"name": a.name, "type": a.type_name, "doc": a.doc} for a in self.attrs],
            "cost": self.cost_doc,
        }

    def describe(self) -> str:
        """A few lines for ``inspect --ops``."""
        ins = ", ".join(f"{i.name}{'?' if i.optional else ''}" for i in self.inputs)
        attrs = ", ".join(f"{a.name}: {a.type_name}" for a in self.attrs)
        return "\n".join([
            f"{self.domain}.{self.name} v{self.version}  {self.doc}",
            f"  ({ins}) -> ({', '.join(self.outputs)})",
            f"  attributes  {attrs}",
            f"  cost        {self.cost_doc}",
        ])


# --- costs (the census's convention: binary multiply-accumulates per call) ---------------------


def _weight_layer_cost(call: Call, shape: Shape) -> OpCost:
    """Every output element is one K-long binary dot product; the weights are ``[N, K]`` bits."""
    k = int(call.attrs["in_features"])
    n_out = shape(call.inputs["w_bits"])[0]
    return OpCost(math.prod(shape(call.outputs["y"])) * k, n_out * k, call.inputs["w_bits"])


def _expand_pack_cost(call: Call, shape: Shape) -> OpCost:
    """The first output is packed bits: the MACs are x's rows times N outputs times K."""
    k = int(call.attrs["in_features"])
    n_out = shape(call.inputs["w_bits"])[0]
    rows = math.prod(shape(call.inputs["x"])[:-1]) * n_out
    return OpCost(rows * k, n_out * k, call.inputs["w_bits"])


def _scores_cost(call: Call, shape: Shape) -> OpCost:
    """One binary product per head: ``B h N N d``."""
    b, h, t, _ = shape(call.outputs["scores"])
    return OpCost(b * h * t * t * (shape(call.inputs["q"])[-1] // h))


def _context_cost(call: Call, shape: Shape) -> OpCost:
    """Three binary products per head (one per mask or level bit): ``3 B h N N d``."""
    b, h, t, _ = shape(call.inputs["p"])
    return OpCost(3 * b * h * t * t * (shape(call.inputs["v"])[-1] // h))


# --- the entries ---------------------------------------------------------------------------------

_X = Input("x", "float activations [..., K] (NCHW for the conv)")
_SHIFT = Input("shift", "float [K] (conv: [C]) added before the sign (the learned move)")
_W = Input("w_bits", "uint64 [N, ceil(K/64)] packed +-1 weights, bit 1 = -1")
_SCALE = Input("scale", "float [N] per-output scale")
_BIAS = Input("bias", "float [N] per-output bias")
_IN_FEATURES = Attribute("in_features", INT, "K, the binary dot-product length (bits used of the packed words)")
_NUM_HEADS = Attribute("num_heads", INT, "attention heads h (C = h d)")
_V = [Input("p", "float softmax probabilities [B, h, N, N]"), Input("v", "float values [B, N, C]"),
      Input("v_shift", "float [C] added to v before the sign")]
_WEIGHT_COST = "output elements x in_features (one K-bit dot product each)"

SCHEMAS: dict[str, OpSchema] = {s.name: s for s in (
    OpSchema(
        "BinaryLinear", "(sign(x + shift) . w) * scale + bias over the last axis",
        (_X, _SHIFT, _W, _SCALE, _BIAS), ("y",), (_IN_FEATURES,), BINARY_LINEAR, _weight_layer_cost, _WEIGHT_COST,
    ),
    OpSchema(
        "BinaryExpandPack", "the MLP expansion: packed bits of the next sign and the pooled residual",
        (_X, _SHIFT, _W, _SCALE, _BIAS,
         Input("rp_shift", "float [N] subtracted before the PReLU"), Input("rp_slope", "float [N] PReLU slope"),
         Input("rp_bias", "float [N] added after the PReLU"), Input("next_shift", "float [N] the next layer's shift")),
        ("bits", "pooled"), (_IN_FEATURES, Attribute("ratio", INT, "expansion ratio N / K")), BINARY_EXPAND_PACK,
        _expand_pack_cost, "rows(x) x N x in_features",
    ),
    OpSchema(
        "PackedBinaryLinear", "BinaryLinear of activations that are already sign-packed words",
        (Input("x_bits", "uint64 [..., ceil(K/64)] packed activations"), _W, _SCALE, _BIAS), ("y",), (_IN_FEATURES,),
        PACKED_BINARY_LINEAR, _weight_layer_cost, _WEIGHT_COST,
    ),
    OpSchema(
        "BinaryConv2d", "conv of sign(x + shift) (zero padding after the sign) with +-1 weights, * scale + bias",
        (_X, _SHIFT, _W, _SCALE, _BIAS), ("y",),
        (Attribute("kernel_shape", INTS, "[kh, kw]", length=2), Attribute("strides", INTS, "[sh, sw]", length=2),
         Attribute("pads", INTS, "[top, left, bottom, right]", minimum=0, length=4),
         Attribute("dilations", INTS, "[dh, dw]", length=2), Attribute("group", INT, "channel groups"),
         Attribute("in_features", INT, "K = C / group x kh x kw")),
        BINARY_CONV2D, _weight_layer_cost, _WEIGHT_COST,
    ),
    OpSchema(
        "BinaryAttentionScores", "(sign(q + q_shift)_h . sign(k + k_shift)_h) / scale per head",
        (Input("q", "float [B, N, C]"), Input("k", "float [B, N, C]"), Input("q_shift", "float [C]"),
         Input("k_shift", "float [C]")),
        ("scores",), (_NUM_HEADS, Attribute("scale", FLOAT, "the divisor (sqrt(d))")), BINARY_ATTENTION_SCORES,
        _scores_cost, "B x h x N x N x d",
    ),
    OpSchema(
        "QDAttentionContext", "alpha_h sum_j (p >= t_hj) @ sign(v + v_shift)_h, heads merged",
        (*_V, Input("thresholds", "float [h, 3] level thresholds"), Input("alpha", "float [h] per-head scale")),
        ("ctx",), (_NUM_HEADS,), QD_ATTENTION_CONTEXT, _context_cost, "3 x B x h x N x N x d (one per level bit)",
    ),
    OpSchema(
        "GSBAttentionContext", "sum_P w_P P @ sign(v + v_shift)_h over the masks B, U, V of p / clip, heads merged",
        (*_V, Input("clip", "float [1]"), Input("rel", "float [2] relative thresholds of U and V"),
         Input("weights", "float [3] mask weights")),
        ("ctx",), (_NUM_HEADS,), GSB_ATTENTION_CONTEXT, _context_cost, "3 x B x h x N x N x d (one per mask)",
    ),
)}
OP_TYPES = tuple(SCHEMAS)


def schema_of(op_type: str, domain: str = DOMAIN) -> Optional[OpSchema]:
    """The entry of ``domain.op_type``, or None for a standard op or an unknown one."""
    return SCHEMAS.get(op_type) if domain == DOMAIN else None


def function_protos(used: Optional[set[str]] = None) -> list[onnx.FunctionProto]:
    """Parsed function bodies (of the ops in ``used``, or all), ready for ``model.functions``."""
    return [s.function_proto() for name, s in SCHEMAS.items() if used is None or name in used]


def validate_model(model: onnx.ModelProto, prefix: str = "") -> None:
    """Validate every ``bhvit`` node of ``model`` against its entry (unknown op types are left to the callers)."""
    for node in model.graph.node:
        schema = schema_of(node.op_type, node.domain)
        if schema is not None:
            schema.validate(node, f"{prefix}{node.op_type} node '{node.name}'")


def check_against_bodies() -> None:
    """Each entry's inputs, outputs and attribute names are its function body's (in order)."""
    for s in SCHEMAS.values():
        f = s.function_proto()
        got = (f.domain, f.name, tuple(f.input), tuple(f.output), tuple(f.attribute))
        want = (s.domain, s.name, s.input_names, s.outputs, tuple(a.name for a in s.attrs))
        if got != want:
            raise AssertionError(f"{s.name}: schema {want} disagrees with its function body {got}")
