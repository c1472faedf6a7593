"""``layer_norm`` over the last axis as a call of the pre-scheduled row kernel.

TOPI's legalised layer norm, under dlight's reduction schedule, sums each row in two scalar
dependency chains (an ``fadd`` per element, its latency each time): 1.9 ms of BHViT-Tiny's
Cortex-A72 estimate for the attention's layer norms. :func:`bhvit_export.targets.kernels.layer_norm.make_layer_norm`
sums with independent vector accumulators and normalises in TOPI's order; the sums differ from
TOPI's sequential ones by float rounding (another summation order). Layer norms over other axes,
without ``center``/``scale``, or with symbolic shapes keep Relax's lowering.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import OPAQUE, replace_ops, static_shape, target_f32_lanes


def _rewrite(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    from bhvit_export.targets.kernels.layer_norm import make_layer_norm

    x, gamma, beta = call.args
    shape = static_shape(x)
    a = call.attrs
    axes = [int(v) for v in a.axes]
    if shape is None or len(axes) != 1 or axes[0] % len(shape) != len(shape) - 1 or not (a.center and a.scale):
        return call
    n = shape[-1]
    if any(static_shape(p) != [n] or str(p.ty.dtype) != "float32" for p in (gamma, beta)) or str(x.ty.dtype) != "float32":
        return call
    func = make_layer_norm(tuple(shape), float(a.epsilon), target_f32_lanes())
    func = func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)
    gv = bb.add_func(func, f"layer_norm_rows_{'x'.join(map(str, shape))}")
    return relax.call_tir(gv, [x, gamma, beta], relax.TensorType(shape, "float32"))


def row_layer_norm() -> tvm.transform.Pass:
    """Module pass: every last-axis ``nn.layer_norm`` (static, float32, with gamma and beta)
    becomes a call of the row kernel."""
    return replace_ops("BhvitRowLayerNorm", {"relax.nn.layer_norm": _rewrite})


__all__ = ["row_layer_norm"]
