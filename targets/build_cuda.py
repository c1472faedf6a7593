"""Compile an imported Relax module for a CUDA target (Jetson Orin, or an x86-hosted H100/H200).

The pipeline is TVM 0.27's CUDA Relax pipeline (``tvm.relax.backend.cuda.pipeline``): library
dispatch, ``LegalizeOps``, op-pattern annotation, constant folding, ``FuseOps``/``FuseTIR``, the
dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), dataflow lowering and the
VM finalisation passes. It is run in two halves instead of through ``get_default_pipeline`` so that
one check can run between scheduling and lowering: every PrimFunc must have a GPU schedule by then.
A PrimFunc no dlight rule matches is left with unbound loops, and TVM only notices much later in
``VerifyMemory`` with an error that names neither the op nor the fix; we name the functions.

Our packed kernels (``targets.kernels``: sign-pack, XNOR popcount GEMM) are imported already
scheduled for the CUDA target (``tirx.is_scheduled``, opaque), so fusion and dlight leave them alone.

Cross-compiling: the device code is compiled by nvcc for the target's ``arch`` (sm_87 on Orin) and
embedded in the host library; the host part is LLVM code for the target's host (aarch64 for the
Jetson tag), linked by :func:`export_cuda_library` with the matching cross compiler.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import tvm
from tvm import relax

from bhvit_export.errors import TargetError
from targets.kernels.target_info import TargetLike, as_target, is_aarch64

#: The Jetson Orin Nano tag: CUDA sm_87 device, aarch64 (``mtriple=aarch64-linux-gnu``) host.
JETSON_ORIN: str = "nvidia/jetson-orin-nano"
#: An H100/H200 device on an x86-64 host: what a bundle for a datacenter GPU run is built for.
X86_SM90: dict = {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}

#: Cross compiler (C++ driver, so TVM's C++ runtime pieces link) for aarch64 hosts.
AARCH64_CXX = "aarch64-linux-gnu-g++"


def cuda_target(target: TargetLike) -> tvm.target.Target:
    """``target`` as a CUDA Target with a host; raises ``TargetError`` for anything else."""
    tgt = as_target(target)
    if tgt.kind.name != "cuda":
        raise TargetError(f"build_cuda needs a cuda target, got {tgt.kind.name}")
    if tgt.host is None:
        tgt = tvm.target.Target(tgt, host={"kind": "llvm"})
    return tgt


def require_nvcc() -> str:
    """Path of nvcc (TVM compiles the generated CUDA C with it), or a ``TargetError`` saying how to get it."""
    path = shutil.which("nvcc")
    if path is None:
        raise TargetError(
            "nvcc not found on PATH: install the CUDA toolkit (apt-get install nvidia-cuda-toolkit, "
            "or NVIDIA's cuda-toolkit package) to compile for CUDA targets"
        )
    return path


def require_cross_compiler(host: tvm.target.Target) -> Optional[str]:
    """The C++ compiler that links a library for ``host``: the aarch64 cross g++ for an aarch64
    host, ``None`` (TVM's default, the native compiler) otherwise."""
    if not is_aarch64(host):
        return None
    if shutil.which(AARCH64_CXX) is None:
        raise TargetError(
            f"{AARCH64_CXX} not found: apt-get install g++-aarch64-linux-gnu to link for an aarch64 host"
        )
    return AARCH64_CXX


def unscheduled_functions(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs in ``mod`` that carry no schedule (no ``tirx.is_scheduled``), sorted."""
    names = []
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            attrs = func.attrs if func.attrs is not None else {}
            if not bool(attrs.get("tirx.is_scheduled", False)):
                names.append(gv.name_hint)
    return sorted(names)


def require_gpu_schedules(mod: tvm.IRModule) -> None:
    """Raise ``TargetError`` naming every PrimFunc of ``mod`` left without a GPU schedule."""
    missing = unscheduled_functions(mod)
    if missing:
        raise TargetError(
            f"no GPU schedule for {len(missing)} function(s) (no dlight rule matched): {', '.join(missing)}"
        )


def schedule_for_cuda(mod: tvm.IRModule, target: TargetLike) -> tvm.IRModule:
    """The first half of the CUDA pipeline: library dispatch, legalisation, fusion and the dlight
    GPU rules; every PrimFunc of the result is scheduled (else ``TargetError``).

    Run from Python rather than as a pass inside ``tvm.compile``: an exception raised in a Python
    pass crosses TVM's FFI and comes back as a plain ``RuntimeError``, losing the ``TargetError``.
    """
    from tvm.relax.backend.cuda import pipeline as cuda

    tgt = cuda_target(target)
    with tgt:
        seq = tvm.transform.Sequential(cuda.library_dispatch_passes(tgt) + cuda.legalize_passes(tgt))
        scheduled = seq(mod)
    require_gpu_schedules(scheduled)
    return scheduled


def _lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    """The second half: dataflow lowering and VM finalisation (CUDA graph rewrite included)."""
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0)
    def _run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return seq(mod)

    return _run


def build_cuda(mod: tvm.IRModule, target: TargetLike) -> relax.VMExecutable:
    """Compile ``mod`` (imported with ``import_fused(..., target=target)``) for a CUDA ``target``.

    ``target`` is a tag (:data:`JETSON_ORIN`) or a dict such as :data:`X86_SM90`; a CUDA target
    without a host gets an x86 LLVM host. nvcc must be installed; no GPU is needed to build.
    """
    tgt = cuda_target(target)
    require_nvcc()
    scheduled = schedule_for_cuda(mod, tgt)
    return tvm.compile(scheduled, target=tgt, relax_pipeline=_lowering(tgt))


def export_cuda_library(
    ex: relax.VMExecutable, path: Union[str, Path], host_cc: Optional[str] = None
) -> Path:
    """Write ``ex`` as one shared library (host code + embedded device code) for its host.

    ``host_cc`` is the C++ compiler that links it: for an aarch64 host (the Jetson tag) pass
    :data:`AARCH64_CXX` (``aarch64-linux-gnu-g++``); ``None`` uses TVM's default (native) compiler,
    right for an x86 host. The library loads with ``tvm.runtime.load_module`` on the device.
    """
    out = Path(path)
    if host_cc is not None and shutil.which(host_cc) is None:
        raise TargetError(f"{host_cc} not found: apt-get install g++-aarch64-linux-gnu")
    if host_cc is None:
        ex.export_library(str(out))
    else:
        ex.export_library(str(out), cc=host_cc)
    return out
