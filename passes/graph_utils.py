"""Small onnx-graphsurgeon helpers shared by the passes: constants, producers, consumers."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """The value of a gs.Constant, a ``Constant`` node's output, or an ``Identity`` of either.

    (The torch exporter shares equal initializers between layers through Identity nodes.)
    """
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Identity":
        return const_value(t.inputs[0].inputs[0])
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs.get("value")
        if isinstance(v, gs.Constant):
            return np.asarray(v.values)
        if v is not None and hasattr(v, "values"):
            return np.asarray(v.values)
    return None


def last_axis_vector(c: np.ndarray | None, n: int) -> np.ndarray | None:
    """``c`` as a float32 ``[n]`` if it broadcasts along the last axis only (or is a scalar), else None."""
    if c is None:
        return None
    if c.size == 1:
        return np.full(n, float(c.reshape(())), np.float32)
    if c.size == n and c.shape[-1] == n:
        return c.reshape(n).astype(np.float32)
    return None


def producer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    """The node that writes ``t`` (only if its op is ``op``, when given)."""
    if isinstance(t, gs.Constant) or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    return node if op is None or node.op == op else None


def only_consumer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    """The single node reading ``t`` (None if several read it, or it is a graph output)."""
    if len(t.outputs) != 1:
        return None
    node = t.outputs[0]
    return node if op is None or node.op == op else None


def split_const_operand(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """For a binary op with one constant operand: (the variable operand, the constant value)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    vb, va = const_value(b), const_value(a)
    if vb is not None and va is None:
        return a, vb
    if va is not None and vb is None:
        return b, va
    return None


def sign_source(t: gs.Tensor, shift_shape: Sequence[int]) -> tuple[gs.Tensor, np.ndarray] | None:
    """If ``t = Sign(x + shift)`` (or ``Sign(x)``), return ``(x, shift)`` with shift in ``shift_shape``.

    The shift (a constant ``move`` added right before the sign) becomes an input of the fused op,
    which binarizes ``x + shift`` itself; other readers of the Add keep it.
    """
    sign = producer(t, "Sign")
    if sign is None:
        return None
    x = sign.inputs[0]
    add = producer(x, "Add")
    if add is not None and (split := split_const_operand(add)) is not None:
        var, c = split
        if c.size == int(np.prod(shift_shape)) or c.size == 1:
            return var, np.broadcast_to(c.astype(np.float32).reshape(-1), (int(np.prod(shift_shape)),)).reshape(
                shift_shape
            ).copy()
    return x, np.zeros(shift_shape, dtype=np.float32)


def binary_weight_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Split ``w [O, ...]`` into per-row scale ``s`` and signs if every entry is exactly ``+-s_o``.

    Returns None (the layer is not binary, or a row holds an exact 0 that one bit cannot encode).
    """
    rows = w.reshape(w.shape[0], -1).astype(np.float32)
    scale = np.abs(rows).max(axis=1)
    if not np.all(np.abs(rows) == scale[:, None]) or np.any(scale == 0):
        return None
    return scale, rows


def packed_weight_inputs(
    name: str, x: gs.Tensor, shift: np.ndarray, signs: np.ndarray, scale: np.ndarray, bias: np.ndarray
) -> dict[str, gs.Tensor]:
    """The inputs ``x, shift, w_bits, scale, bias`` shared by BinaryLinear and BinaryConv2d, by name."""
    from .ops import pack_bits

    return {
        "x": x,
        "shift": gs.Constant(f"{name}/shift", shift.astype(np.float32)),
        "w_bits": gs.Constant(f"{name}/w_bits", pack_bits(signs)),
        "scale": gs.Constant(f"{name}/scale", scale.astype(np.float32)),
        "bias": gs.Constant(f"{name}/bias", bias.astype(np.float32)),
    }


def bhvit_node(op: str, name: str, inputs: Mapping[str, gs.Tensor], outputs: list[gs.Tensor], **attrs: Any) -> gs.Node:
    """A new ``bhvit`` node built through its schema entry (inputs by name, attributes in order)."""
    from .op_schema import SCHEMAS

    schema = SCHEMAS[op]
    return gs.Node(op=op, name=name, domain=schema.domain, attrs=schema.attributes(**attrs),
                   inputs=schema.positional(inputs), outputs=outputs)


def bhvit_inputs(node: gs.Node) -> dict[str, Any]:
    """The inputs of an existing ``bhvit`` node by name (its schema entry's)."""
    from .op_schema import SCHEMAS

    return SCHEMAS[node.op].named(list(node.inputs), f"{node.op} node '{node.name}'")
