"""Compile scheduled kernels and get at their machine code.

One entry point for every kernel so the TVM 0.27 build API (``tvm.compile`` returning an
``Executable`` that wraps the runtime module) is handled in one place. Cross targets (aarch64) are
compiled but never run here; their assembly is what the tests check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import tvm

from .target_info import TargetLike, as_target

Kernel = Union[tvm.tirx.PrimFunc, tvm.IRModule]


def _as_module(func: Kernel) -> tvm.IRModule:
    """Wrap a PrimFunc as ``main`` of an IRModule (what ``tvm.compile`` and inspect expect)."""
    if isinstance(func, tvm.IRModule):
        return func
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def build_kernel(func: Kernel, target: TargetLike) -> tvm.runtime.Module:
    """Compile a (scheduled) kernel for ``target`` and return the LLVM runtime module.

    The result's ``main`` is callable only when ``target`` matches the host; for cross targets use
    :func:`assembly` or :func:`export_object`.
    """
    executable = tvm.compile(_as_module(func), target=as_target(target))
    return executable.mod


def assembly(func: Kernel, target: TargetLike) -> str:
    """Assembly text of the compiled kernel (used to check that vector popcounts were emitted)."""
    return build_kernel(func, target).inspect_source("asm")


def export_object(func: Kernel, target: TargetLike, path: Union[str, Path]) -> Path:
    """Write the kernel as a relocatable object file (``.o``) for linking on the target device."""
    out = Path(path)
    build_kernel(func, target).write_to_file(str(out))
    return out
