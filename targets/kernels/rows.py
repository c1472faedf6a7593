"""What the float row kernels (:mod:`.softmax`, :mod:`.layer_norm`) share: how rows are shared out.

Rows of the last axis are short (50-512 floats), so one parallel task takes a contiguous block of
rows, and the per-row scratch buffers are allocated once per task (a buffer allocated inside the
row loop is a ``TVMBackendAllocWorkspace`` call per row).
"""

from __future__ import annotations

from tvm import tirx

#: Parallel tasks of rows (a thread-pool launch per task).
PARALLEL_TASKS = 48


def tasks_of(rows: int) -> tuple[int, int]:
    """``(tasks, rows per task)`` for ``rows`` rows."""
    tasks = min(rows, PARALLEL_TASKS)
    return tasks, -(-rows // tasks)


def unravel(row: tirx.PrimExpr, lead: tuple[int, ...]) -> list[tirx.PrimExpr]:
    """Leading indices of flat row ``row`` (row-major over ``lead``)."""
    idx: list[tirx.PrimExpr] = []
    rest = row
    for d in reversed(lead):
        idx.append(tirx.floormod(rest, d))
        rest = tirx.floordiv(rest, d)
    return idx[::-1]


__all__ = ["PARALLEL_TASKS", "tasks_of", "unravel"]
