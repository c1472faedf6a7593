"""Sizing TVM's CPU thread pool: one place for the two TVM 0.27 traps.

The pool is sized once, lazily, from ``TVM_NUM_THREADS`` (and without it x86 assumes
hyper-threading and uses *half* the logical CPUs: 1 thread on a 2-vCPU box), and
``runtime.config_threadpool`` can only shrink an existing pool, never grow it.
"""

from __future__ import annotations

import os


def set_threads(threads: int) -> None:
    """Ask TVM's CPU thread pool for ``threads`` workers.

    Sets the variable (effective if no parallel kernel ran yet in this process) and then
    reconfigures (effective for shrinking). For clean multi-thread numbers use a fresh process per
    thread count, or go from the largest count down.
    """
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(int(threads))
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
