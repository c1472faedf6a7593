"""Compile an imported Relax module for a CPU target and run it.

The pipeline is TVM 0.27's default CPU Relax pipeline (what ``tvm.compile`` runs for ``llvm``:
library dispatch, ``LegalizeOps``, op-pattern annotation, constant folding, ``FuseOps``/``FuseTIR``,
dataflow lowering, memory planning, VM lowering), with the CPU schedule rules of
:mod:`bhvit_export.targets.schedules.cpu` (ours plus dlight's GEMV and Reduction) applied to the legalized, fused
PrimFuncs before the VM lowering. Our pre-scheduled packed kernels carry ``tirx.is_scheduled`` and
``op_pattern = opaque``, so neither fusion nor the rules touch them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import tvm
from tvm import relax

from bhvit_export.targets.kernels.target_info import TargetLike, as_target, host_target


def _pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with our Relax rewrites first and our schedule rules after fusion.

    The rewrites (:mod:`bhvit_export.targets.relax_passes`: image-layout islands in NHWC, patch convolutions
    as matmuls, rolls as takes, repeated concats as broadcasts, a vectorisable erf, softmax and
    layer norm as pre-scheduled row kernels, divides by constants as multiplies) make the float remainder
    legalise to contiguous loops; then every legalised PrimFunc that is not one of our
    pre-scheduled kernels gets a parallel, vectorised schedule (:mod:`bhvit_export.targets.schedules.cpu`); without
    it most of them compile to serial scalar loops.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from bhvit_export.targets.relax_passes import (
        fast_erf,
        fast_softmax,
        reciprocal_divide,
        repeat_concat,
        roll_concat,
        row_layer_norm,
        token_layout,
    )
    from bhvit_export.targets.schedules.cpu import apply_schedules

    @tvm.transform.module_pass(opt_level=0)
    def _run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [token_layout(), roll_concat(), repeat_concat(), fast_erf(), fast_softmax(), row_layer_norm(), reciprocal_divide()]
                + cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + [apply_schedules(target)]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return seq(mod)

    return _run


def build(mod: tvm.IRModule, target: TargetLike | None = None) -> relax.VMExecutable:
    """Compile ``mod`` (Relax ``main`` + any PrimFuncs) for ``target`` (default: the host CPU).

    CUDA targets go to :func:`bhvit_export.targets.build_cuda.build_cuda` (GPU pipeline, nvcc); import ``mod``
    with the same target so its packed kernels carry GPU schedules.
    """
    tgt = as_target(target) if target is not None else host_target()
    if tgt.kind.name == "cuda":
        from bhvit_export.targets.build_cuda import build_cuda

        return build_cuda(mod, tgt)
    if tgt.kind.name != "llvm":
        from bhvit_export.errors import TargetError

        raise TargetError(f"only llvm CPU and cuda targets are built here, got {tgt.kind.name}")
    return tvm.compile(mod, target=tgt, relax_pipeline=_pipeline(tgt))


def vm(ex: relax.VMExecutable) -> relax.VirtualMachine:
    """A CPU virtual machine for a built executable."""
    return relax.VirtualMachine(ex, tvm.cpu())


def run(ex: Union[relax.VMExecutable, relax.VirtualMachine], x: np.ndarray) -> np.ndarray:
    """Run ``main`` on one float32 input (its shape must be the static one it was built for)."""
    machine = ex if isinstance(ex, relax.VirtualMachine) else vm(ex)
    arr = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), tvm.cpu())
    out = machine["main"](arr)
    if not hasattr(out, "numpy"):  # a tuple of outputs: the model has one, logits
        out = out[0]
    return out.numpy()


def export_library(ex: relax.VMExecutable, path: Union[str, Path]) -> Path:
    """Write the executable as a shared library loadable with ``tvm.runtime.load_module``."""
    out = Path(path)
    ex.export_library(str(out))
    return out
