"""Layer norm over the last axis as one pre-scheduled CPU kernel: vector sums, not scalar chains.

Legalised as TOPI's ``layer_norm`` and scheduled by dlight's reduction rule, each row's sum and
sum of squares are scalar loops: one dependent ``fadd`` per element (four cycles each on a
Cortex-A72), 1.9 ms of Tiny's estimate for its attention layer norms (rows of 256 and 512).
Here each row's two sums run over full vectors into :data:`ACCUMULATORS` independent vector
accumulators (the tail of a row that is not a multiple of the vector width apart), then

    y = (x - mean) * rsqrt(var + eps) * gamma + beta

in TOPI's order (``mean = sum / n``, ``var = sum((x - mean)^2) / n``). The sums are taken in another
order than TOPI's sequential loop: within float rounding of it (a few ulp of the row's scale).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .rows import tasks_of, unravel

#: Independent vector accumulators per sum (hides the add latency).
ACCUMULATORS = 4


def layer_norm_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """numpy reference of :func:`make_layer_norm` (float64 sums, float32 result)."""
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)


def make_layer_norm(shape: tuple[int, ...], eps: float, lanes: int) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x, gamma, beta, y)``: layer norm of float32 ``x`` over its last axis.

    ``lanes``: float32 lanes of one vector register (4 on NEON, 8 on AVX2, 16 on AVX-512).
    """
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1 or lanes < 2:
        raise ValueError(f"layer norm needs a positive shape and 2+ lanes, got {shape}, {lanes}")
    n = shape[-1]
    lead = shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    tasks, per_task = tasks_of(rows)

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            x = T.arg("x", T.Buffer(shape, "float32"))
            gamma = T.arg("gamma", T.Buffer((n,), "float32"))
            beta = T.arg("beta", T.Buffer((n,), "float32"))
            y = T.arg("y", T.Buffer(shape, "float32"))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.sblock("root"):  # Relax's analyses of same-size calls need a root block
                with T.parallel(0, tasks) as task:
                    acc = T.alloc_buffer((ACCUMULATORS, lanes), "float32", scope="global")
                    stat = T.alloc_buffer((2,), "float32", scope="global")  # mean, 1 / std
                    with T.serial(0, per_task) as step:
                        row = task * per_task + step
                        with T.If(row < rows):
                            with T.Then():
                                _row(x, gamma, beta, y, acc, stat, unravel(row, lead), n, eps, lanes)
    return ib.get()


def _row_sum(x, acc, lead, n: int, lanes: int, term) -> tirx.PrimExpr:  # noqa: ANN001
    """``sum_k term(x[lead, k])`` of one row: vectors into the accumulators, then lanes + tail."""
    nv, tail = divmod(n, lanes)
    groups = nv // ACCUMULATORS
    used = min(nv, ACCUMULATORS)
    vec = lambda j: tirx.BufferLoad(x, [*lead, tirx.Ramp(j * lanes, 1, lanes)])  # noqa: E731
    lanes_all = tirx.Ramp(0, 1, lanes)
    for a in range(used):
        T.buffer_store(acc, term(vec(a), lanes), [a, lanes_all])
    if groups > 1:
        with T.serial(1, groups) as g:
            for a in range(ACCUMULATORS):
                T.buffer_store(acc, tirx.BufferLoad(acc, [a, lanes_all]) + term(vec(g * ACCUMULATORS + a), lanes), [a, lanes_all])
    for j in range(groups * ACCUMULATORS if groups else used, nv):
        a = j % ACCUMULATORS
        T.buffer_store(acc, tirx.BufferLoad(acc, [a, lanes_all]) + term(vec(j), lanes), [a, lanes_all])
    total: tirx.PrimExpr = tirx.const(0.0, "float32")
    if used:
        v = tirx.BufferLoad(acc, [0, lanes_all])
        for a in range(1, used):
            v = v + tirx.BufferLoad(acc, [a, lanes_all])
        T.buffer_store(acc, v, [0, lanes_all])
        total = acc[0, 0]
        for lane in range(1, lanes):
            total = total + acc[0, lane]
    for t in range(tail):
        total = total + term(x[(*lead, nv * lanes + t)], 1)
    return total


def _row(x, gamma, beta, y, acc, stat, lead, n: int, eps: float, lanes: int) -> None:  # noqa: ANN001
    nv, tail = divmod(n, lanes)
    inv_n = tirx.const(float(n), "float32")
    T.buffer_store(stat, _row_sum(x, acc, lead, n, lanes, lambda v, _lanes: v) / inv_n, [0])
    mean = stat[0]

    def sq(v: tirx.PrimExpr, v_lanes: int) -> tirx.PrimExpr:
        m = tirx.Broadcast(mean, v_lanes) if v_lanes > 1 else mean
        return (v - m) * (v - m)

    var = _row_sum(x, acc, lead, n, lanes, sq) / inv_n
    T.buffer_store(stat, tirx.rsqrt(var + tirx.const(float(np.float32(eps)), "float32")), [1])
    if nv:
        mb, rb = tirx.Broadcast(stat[0], lanes), tirx.Broadcast(stat[1], lanes)
        with T.serial(0, nv) as j:
            cols = tirx.Ramp(j * lanes, 1, lanes)
            xv = tirx.BufferLoad(x, [*lead, cols])
            T.buffer_store(y, (xv - mb) * rb * tirx.BufferLoad(gamma, [cols]) + tirx.BufferLoad(beta, [cols]), [*lead, cols])
    for t in range(tail):
        k = nv * lanes + t
        T.buffer_store(y, (x[(*lead, k)] - stat[0]) * stat[1] * gamma[k] + beta[k], [*lead, k])


__all__ = ["ACCUMULATORS", "layer_norm_reference", "make_layer_norm"]
