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


def known_cpus(triple: str) -> list[str]:
    """The CPU names LLVM accepts for ``triple`` ("" for this host's); empty if TVM cannot say."""
    from tvm.target import codegen

    try:
        probe = tvm.target.Target({"kind": "llvm", **({"mtriple": triple} if triple else {})})
        return [str(c) for c in codegen.llvm_get_cpu_archlist(probe)]
    except Exception:  # an LLVM-less TVM build: nothing to check against
        return []


def close_names(name: str, names: list[str], n: int = 5) -> list[str]:
    """The ``n`` names most like ``name`` (difflib's ratio; a transposition such as a27/a72 ranks first)."""
    scored = []
    for c in names:
        score = difflib.SequenceMatcher(None, name, c).ratio() + (0.05 if sorted(c) == sorted(name) else 0.0)
        if score >= 0.6:
            scored.append((-score, c))
    return [c for _s, c in sorted(scored)[:n]]


def check_mcpu_name(mcpu: str, triple: str, what: str) -> None:
    """TargetError when LLVM does not know ``mcpu`` for ``triple`` (call before creating the target:
    TVM prints its own complaint about an unknown CPU when the target is created).

    The one unknown-CPU check: ``--mcpu`` of our short names, JSON targets, tags and a CUDA target's
    host all come here, so the message and its suggestions are the same everywhere.
    """
    cpus = known_cpus(triple)
    if not mcpu or not cpus or mcpu in cpus:
        return
    from bhvit_export.targets.arch import arch_for_triple

    rec = arch_for_triple(triple)
    close = close_names(mcpu, cpus, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(cpus[:5])}"
    raise TargetError(
        f"{what}: LLVM does not know the CPU '{mcpu}' for {rec.name if rec else triple or 'this host'} ({hint}) "
        "(`bhvit-export targets` lists them)"
    )


def check_mcpu(tgt: tvm.target.Target, what: str) -> None:
    """The same for the llvm part of a created target (tags, JSON targets, a CUDA target's host)."""
    cpu_target: Optional[tvm.target.Target] = tgt if tgt.kind.name == "llvm" else tgt.host
    if cpu_target is None or cpu_target.kind.name != "llvm":
        return
    mcpu = str(cpu_target.attrs.get("mcpu", "") or "")
    check_mcpu_name(mcpu, str(cpu_target.attrs.get("mtriple", "") or ""), what)
