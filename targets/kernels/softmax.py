"""Row softmax over the last axis as one pre-scheduled CPU kernel: vector loops, no divides.

BHViT's attention softmax rows are 53 (Tiny's window of 49 + 4 pooled keys) or 50 long, not a
multiple of the vector width. Legalised and scheduled as TOPI's ``fast_softmax`` (dlight's
reduction rule), every vector loop carried a ``where`` predicate for the tail, which TVM
scalarises: one scalar ``exp`` polynomial and one ``fdiv`` per element (IPC 0.7 on the
Cortex-A72 estimate, 3.4 ms of Tiny). Here each row is

1. its maximum: a vector ``max`` over the full vectors, then the lanes and the tail;
2. ``e = fast_exp(x - max)`` stored to the output, summed into a vector accumulator;
3. ``y = e * (1 / sum)``: one reciprocal per row, a multiply per element.

``fast_exp`` is TOPI's (Cephes range reduction + degree-7 polynomial, within 1e-6 relative): the
same expression as :func:`tvm.topi.fast_exp`, written over vectors here. Against TOPI's
``fast_softmax`` the sum is taken in another order (lanes, then the tail) and ``e * (1/s)``
rounds once more than ``e / s``: within 3e-7 relative of it. Rows run in parallel, a
contiguous block of rows per task (:mod:`.rows`).

Each row is one long dependency chain (max -> exp -> sum -> reciprocal -> scale), so a task
takes its rows two at a time, each step emitted for both rows in the same loop bodies: the core
overlaps the two chains. A row's tail (``n % lanes``) is not a scalar ``exp`` chain but the
row's last full vector again (``n - lanes .. n``), its overlapping lanes recomputed bit for bit;
the tail is still summed after the lanes, so the output is bit-identical to one row at a time
with a scalar tail. Cortex-A72 estimate (``bench --arm``) of Tiny's ``softmax_rows_4x4x53x53``:
4.76 ms before, 1.73 ms after.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .rows import tasks_of, unravel

# TOPI's fast_exp (include/tvm/topi/elemwise.h, fast_exp_float32).
_EXP_HI = 88.3762626647950
_EXP_LO = -88.3762626647949
_LOG2E = 1.44269504088896341
_LN2 = 0.6931471805599453
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _const(value: float, lanes: int, dtype: str = "float32") -> tirx.PrimExpr:
    """A constant (broadcast to ``lanes``); float32 values rounded to float32 first, as TOPI's
    C++ ``make_const(Float(32), 1.0f)`` does (a ``FloatImm`` holds a double)."""
    c = tirx.const(float(np.float32(value)) if dtype == "float32" else value, dtype)
    return tirx.Broadcast(c, lanes) if lanes > 1 else c


def fast_exp(x: tirx.PrimExpr, lanes: int) -> tirx.PrimExpr:
    """TOPI's ``fast_exp`` of a float32 scalar or ``float32x{lanes}`` expression."""
    f = lambda v: _const(v, lanes)  # noqa: E731
    xc = tirx.max(tirx.min(x, f(_EXP_HI)), f(_EXP_LO))
    n = tirx.floor(xc * f(_LOG2E) + f(0.5))
    r = xc - n * f(_LN2)
    p = f(_EXP_POLY[0])
    for coef in _EXP_POLY[1:]:
        p = p * r + f(coef)
    p = p * r * r + r + f(1.0)
    idt = "int32" if lanes == 1 else f"int32x{lanes}"
    fdt = "float32" if lanes == 1 else f"float32x{lanes}"
    biased = tirx.Cast(idt, n + f(127.0))
    two_n = tirx.reinterpret(fdt, biased << _const(23, lanes, "int32"))
    return tirx.max(two_n * p, x)


def fast_exp_reference(x: np.ndarray) -> np.ndarray:
    """numpy float32 mirror of :func:`fast_exp` (the same operations in the same order)."""
    x = np.asarray(x, np.float32)
    f = np.float32
    xc = np.maximum(np.minimum(x, f(_EXP_HI)), f(_EXP_LO))
    n = np.floor(xc * f(_LOG2E) + f(0.5)).astype(np.float32)
    r = xc - n * f(_LN2)
    p = np.full_like(x, f(_EXP_POLY[0]))
    for coef in _EXP_POLY[1:]:
        p = p * r + f(coef)
    p = p * r * r + r + f(1.0)
    two_n = ((n + f(127.0)).astype(np.int32) << 23).view(np.float32)
    return np.maximum(two_n * p, x)


def softmax_reference(x: np.ndarray) -> np.ndarray:
    """numpy reference of :func:`make_softmax`: last-axis softmax with ``fast_exp`` and ``e * (1/s)``."""
    x = np.asarray(x, np.float32)
    e = fast_exp_reference(x - x.max(axis=-1, keepdims=True))
    s = e.astype(np.float64).sum(axis=-1, keepdims=True).astype(np.float32)
    return e * (np.float32(1.0) / s)


def make_softmax(shape: tuple[int, ...], lanes: int) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x, y)`` of float32 ``shape``: ``y = softmax(x, axis=-1)``.

    ``lanes``: float32 lanes of one vector register (4 on NEON, 8 on AVX2, 16 on AVX-512).
    """
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1 or lanes < 2:
        raise ValueError(f"softmax needs a positive shape and 2+ lanes, got {shape}, {lanes}")
    n = shape[-1]
    lead = shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    nv, tail = divmod(n, lanes)
    tasks, per_task = tasks_of(rows)

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            x = T.arg("x", T.Buffer(shape, "float32"))
            y = T.arg("y", T.Buffer(shape, "float32"))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            # A root block: Relax's reshape detection (RewriteDataflowReshape) inspects every
            # same-size one-input call and needs one.
            with T.sblock("root"):
                with T.parallel(0, tasks) as task:
                    # Once per task: a buffer allocated in the row loop is a workspace call per row.
                    acc = T.alloc_buffer((2 * lanes,), "float32", scope="global")
                    red = T.alloc_buffer((4,), "float32", scope="global")  # per row: its max, then 1/sum
                    end = tirx.min((task + 1) * per_task, rows)
                    with T.serial(0, (per_task + 1) // 2) as step:
                        row = task * per_task + 2 * step
                        with T.If(row + 1 < end):
                            with T.Then():
                                _rows(x, y, acc, red, [unravel(row, lead), unravel(row + 1, lead)], n, nv, tail, lanes)
                            with T.Else():
                                with T.If(row < end):
                                    with T.Then():
                                        _rows(x, y, acc, red, [unravel(row, lead)], n, nv, tail, lanes)
    return ib.get()


def _rows(x, y, acc, red, leads: list[list], n: int, nv: int, tail: int, lanes: int) -> None:  # noqa: ANN001
    """Rows side by side (the module docstring's three steps, each step for every row in turn).

    Each row is one long dependency chain (max, then exp, then sum, reciprocal, scale); two rows
    interleaved in the same loop bodies give the core two independent chains to overlap.
    """
    rows = range(len(leads))
    vec = lambda i, j: [*leads[i], tirx.Ramp(j * lanes, 1, lanes)]  # noqa: E731
    last = lambda i: [*leads[i], tirx.Ramp(n - lanes, 1, lanes)]  # noqa: E731  the row's last full vector
    a = lambda i: [tirx.Ramp(i * lanes, 1, lanes)]  # noqa: E731  row i's vector accumulator
    ld = tirx.BufferLoad
    # 1. max
    if nv:
        for i in rows:
            T.buffer_store(acc, ld(x, vec(i, 0)), a(i))
        with T.serial(1, nv) as j:
            for i in rows:
                T.buffer_store(acc, tirx.max(ld(acc, a(i)), ld(x, vec(i, j))), a(i))
        for i in rows:
            if tail:  # the row's last vector, overlapping the full ones: max is idempotent
                T.buffer_store(acc, tirx.max(ld(acc, a(i)), ld(x, last(i))), a(i))
            m = acc[i * lanes]
            for lane in range(1, lanes):
                m = tirx.max(m, acc[i * lanes + lane])
            T.buffer_store(red, m, [2 * i])
    else:
        for i in rows:
            m = x[(*leads[i], 0)]
            for t in range(1, tail):
                m = tirx.max(m, x[(*leads[i], t)])
            T.buffer_store(red, m, [2 * i])
    # 2. e = fast_exp(x - max) into y, summed
    sums: list[tirx.PrimExpr] = []
    if nv:
        mb = [tirx.Broadcast(red[2 * i], lanes) for i in rows]
        for i in rows:
            T.buffer_store(acc, _const(0.0, lanes), a(i))
        with T.serial(0, nv) as j:
            for i in rows:
                T.buffer_store(y, fast_exp(ld(x, vec(i, j)) - mb[i], lanes), vec(i, j))
                T.buffer_store(acc, ld(acc, a(i)) + ld(y, vec(i, j)), a(i))
        for i in rows:
            if tail:
                # The tail's exp as the row's last vector: its lanes below the tail recompute (bit
                # for bit) what is stored already; the tail is summed after the lanes, as before.
                T.buffer_store(y, fast_exp(ld(x, last(i)) - mb[i], lanes), last(i))
            s = acc[i * lanes]
            for lane in range(1, lanes):
                s = s + acc[i * lanes + lane]
            for t in range(tail):
                s = s + y[(*leads[i], nv * lanes + t)]
            sums.append(s)
    else:
        for i in rows:
            s = tirx.const(0.0, "float32")
            for t in range(tail):
                T.buffer_store(y, fast_exp(x[(*leads[i], t)] - red[2 * i], 1), [*leads[i], t])
                s = s + y[(*leads[i], t)]
            sums.append(s)
    # 3. y *= 1 / sum
    for i in rows:
        T.buffer_store(red, tirx.const(1.0, "float32") / sums[i], [2 * i + 1])
    if nv:
        with T.serial(0, nv) as j:
            for i in rows:
                T.buffer_store(y, ld(y, vec(i, j)) * tirx.Broadcast(red[2 * i + 1], lanes), vec(i, j))
    for i in rows:
        for t in range(tail):
            k = nv * lanes + t
            T.buffer_store(y, y[(*leads[i], k)] * red[2 * i + 1], [*leads[i], k])


__all__ = ["fast_exp", "fast_exp_reference", "make_softmax", "softmax_reference"]
