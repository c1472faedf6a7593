"""Refuse a CPU name LLVM does not know for the target's triple, naming the close ones.

TVM accepts any ``mcpu`` string; LLVM then prints "'x' is not a recognized processor for this
target (ignoring processor)" for every function it compiles (hundreds of lines) and builds for a
generic CPU, which is slower and not what was asked. LLVM's own list for the triple decides here,
before anything is built, and difflib names the likely intended ones.
"""

from __future__ import annotations

import difflib
from typing import Optional

import tvm

from bhvit_export.errors import TargetError


def known_cpus(cpu_target: tvm.target.Target) -> list[str]:
    """The CPU names LLVM accepts for ``cpu_target``'s triple (empty if TVM cannot say)."""
    from tvm.target import codegen

    try:
        return [str(c) for c in codegen.llvm_get_cpu_archlist(cpu_target)]
    except Exception:  # an LLVM-less TVM build: nothing to check against
        return []


def check_mcpu(tgt: tvm.target.Target, what: str) -> None:
    """TargetError when the llvm part of ``tgt`` names an ``mcpu`` unknown to LLVM for its triple."""
    cpu_target: Optional[tvm.target.Target] = tgt if tgt.kind.name == "llvm" else tgt.host
    if cpu_target is None or cpu_target.kind.name != "llvm":
        return
    mcpu = str(cpu_target.attrs.get("mcpu", "") or "")
    if not mcpu:
        return
    cpus = known_cpus(cpu_target)
    if not cpus or mcpu in cpus:
        return
    triple = str(cpu_target.attrs.get("mtriple", "") or "this host's triple")
    close = difflib.get_close_matches(mcpu, cpus, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(cpus[:5])}"
    raise TargetError(f"{what}: LLVM does not know the CPU '{mcpu}' for {triple} ({hint})")
