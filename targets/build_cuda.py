"""Compile an imported Relax module for a CUDA target (Jetson Orin, or an x86-hosted H100/H200).

The pipeline is TVM 0.27's CUDA Relax pipeline (``tvm.relax.backend.cuda.pipeline``): library
dispatch, ``LegalizeOps``, op-pattern annotation, constant folding, ``FuseOps``/``FuseTIR``, the
dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), dataflow lowering and the
VM finalisation passes. It is run in two halves instead of through ``get_default_pipeline`` so that
one check can run between scheduling and lowering: every PrimFunc must have a GPU schedule by then.
A PrimFunc no dlight rule matches is left with unbound loops, and TVM only notices much later in
``VerifyMemory`` with an error that names neither the op nor the fix; we name the functions.

Our packed kernels (``bhvit_export.targets.kernels``: sign-pack, XNOR popcount GEMM) are imported already
scheduled for the CUDA target (``tirx.is_scheduled``, opaque), so fusion and dlight leave them alone.

Cross-compiling: the device code is compiled by nvcc for the target's ``arch`` (sm_87 on Orin) and
embedded in the host library as a fatbin; the host part is LLVM code for the target's host (aarch64
for the Jetson tag), linked by :func:`export_cuda_library` with the matching cross compiler.

Why :func:`_load_cuda_codegen_runtime` exists: TVM 0.27's codegen only compiles CUDA C to a binary
when its CUDA runtime plugin (``libtvm_runtime_cuda.so``) is loaded, and that plugin links
``libcuda.so.1``, the driver, which a GPU-less build host does not have. Without it TVM silently
embeds the CUDA *source*, which the device must then JIT-compile at load time through a Python
callback (TVM + NVRTC or nvcc on the Jetson; impossible for a C++-only runner). So on such a host we
load the plugin against a stand-in ``libcuda.so.1`` whose few entry points all report "no device":
the driver is never called while compiling, and the library gets real sm_XX code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterator, Optional, Union

import tvm
from tvm import relax

from bhvit_export.errors import TargetError
from bhvit_export.targets.kernels.target_info import TargetLike, as_target

#: The Jetson Orin Nano tag: CUDA sm_87 device, aarch64 (``mtriple=aarch64-linux-gnu``) host.
JETSON_ORIN: str = "nvidia/jetson-orin-nano"
#: An H100/H200 device on an x86-64 host: what a bundle for a datacenter GPU run is built for.
X86_SM90: dict = {"kind": "cuda", "arch": "sm_90", "host": {"kind": "llvm"}}



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
    """The C++ compiler that links a library for ``host``: the cross g++ of its architecture record
    on a host of another architecture, ``None`` (TVM's default, the native compiler) otherwise."""
    from bhvit_export.targets.arch import target_record
    from bhvit_export.targets.toolchain import cross_compiler

    return cross_compiler(target_record(host).name)


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


#: Driver entry points ``libtvm_runtime_cuda.so`` (TVM 0.27) imports; the stand-in defines them all
#: (``ctypes`` loads with RTLD_NOW, so a missing one fails the load with the symbol's name).
_DRIVER_SYMBOLS = (
    "cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx",
    "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled",
)
_CUDA_ERROR_NO_DEVICE = 100
_LOAD_LOCK = threading.Lock()


def _cuda_codegen_available() -> bool:
    """True when TVM can build real CUDA modules (its CUDA runtime plugin is registered)."""
    import tvm_ffi

    return tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None


def _driver_stand_in() -> Path:
    """Build (once per user) a ``libcuda.so.1`` whose every entry point returns "no device"."""
    code = "/* GPU-less build host: lets TVM's CUDA plugin load; never called while compiling. */\n" + "".join(
        f"int {name}(void) {{ return {_CUDA_ERROR_NO_DEVICE}; }}\n" for name in _DRIVER_SYMBOLS
    )
    folder = Path(tempfile.gettempdir()) / f"bhvit-export-nodriver-{os.getuid()}-{zlib.crc32(code.encode()):08x}"
    lib = folder / "libcuda.so.1"  # the loader matches the plugin's NEEDED entry by SONAME
    if lib.is_file():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise TargetError("no C compiler (cc) to build the CUDA driver stand-in: apt-get install gcc")
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "nodriver.c"
    src.write_text(code)
    tmp = folder / f"libcuda.so.1.{os.getpid()}"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], check=True)
    tmp.replace(lib)  # atomic: concurrent builds never load a half-written file
    return lib


def _load_cuda_codegen_runtime() -> None:
    """Make TVM compile device code to binaries here (see the module docstring); no-op when the
    plugin is already loaded (a machine with an NVIDIA driver, or a second build)."""
    with _LOAD_LOCK:
        if _cuda_codegen_available():
            return
        plugin = Path(tvm.__file__).resolve().parent / "lib" / "libtvm_runtime_cuda.so"
        if not plugin.is_file():
            raise TargetError(f"this TVM has no CUDA runtime plugin ({plugin}): install a CUDA-enabled apache-tvm")
        try:
            ctypes.CDLL(str(_driver_stand_in()), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(plugin), mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise TargetError(f"cannot load TVM's CUDA plugin for compiling: {err}") from err
        if not _cuda_codegen_available():
            raise TargetError(f"{plugin.name} loaded but registered no CUDA module factory")


@contextlib.contextmanager
def cuda_compile_scope(target: TargetLike) -> Iterator[tvm.target.Target]:
    """Scope for any ``tvm.compile`` of CUDA code on this host (kernels or whole models).

    Loads the CUDA codegen runtime (device code compiled to binaries, see the module docstring),
    enters the target (TVM's nvcc callback reads the arch from the current target) and selects
    nvcc over NVRTC (NVRTC needs the cuda-python package). Once the plugin is loaded, a CUDA
    ``tvm.compile`` outside this scope fails with "No CUDA architecture was specified".
    """
    tgt = cuda_target(target)
    require_nvcc()
    _load_cuda_codegen_runtime()
    key = "TVM_CUDA_COMPILE_MODE"
    saved = os.environ.get(key)
    os.environ[key] = "nvcc"
    try:
        with tgt:
            yield tgt
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def build_cuda(mod: tvm.IRModule, target: TargetLike) -> relax.VMExecutable:
    """Compile ``mod`` (imported with ``import_fused(..., target=target)``) for a CUDA ``target``.

    ``target`` is a tag (:data:`JETSON_ORIN`) or a dict such as :data:`X86_SM90`; a CUDA target
    without a host gets an x86 LLVM host. nvcc must be installed; no GPU is needed to build. The
    device code is compiled here for the target's ``arch`` (see :func:`device_code_format`).
    """
    with cuda_compile_scope(target) as tgt:
        scheduled = schedule_for_cuda(mod, tgt)
        return tvm.compile(scheduled, target=tgt, relax_pipeline=_lowering(tgt))


def device_code_format(ex: relax.VMExecutable) -> str:
    """How the device code is held: ``"binary"`` (compiled: fatbin/cubin/ptx) or ``"source"``
    (CUDA C, JIT-compiled when the library is loaded). Raises ``TargetError`` without CUDA code."""
    found = []

    def walk(m: tvm.runtime.Module) -> None:
        for sub in m.imports:
            if sub.kind == "cuda":
                found.append(sub)
            walk(sub)

    walk(ex.mod)
    if not found:
        raise TargetError("the executable has no CUDA module")
    # A source module answers inspect_source("cuda") from its code; a compiled one from its
    # in-memory source map; only the compiled one has non-empty code under another format name.
    compiled = [m for m in found if not _is_source_module(m)]
    return "binary" if len(compiled) == len(found) else "source"


def _is_source_module(m: tvm.runtime.Module) -> bool:
    try:
        return len(m.inspect_source("ptx")) == 0 and len(m.inspect_source("fatbin")) == 0 and len(
            m.inspect_source("cubin")
        ) == 0
    except UnicodeDecodeError:  # binary code returned as text: it is compiled
        return False


def export_cuda_library(
    ex: relax.VMExecutable, path: Union[str, Path], host_cc: Optional[str] = None
) -> Path:
    """Write ``ex`` as one shared library (host code + embedded device code) for its host.

    ``host_cc`` is the C++ compiler that links it: for a host of another architecture (the Jetson
    tag's aarch64) the cross g++ of its record (:func:`require_cross_compiler`, a C++ driver so TVM's
    C++ runtime pieces link); ``None`` uses TVM's default (native) compiler, right for a host of this
    machine's architecture. The library loads with ``tvm.runtime.load_module`` on the device.
    """
    from bhvit_export.targets.arch import ARCHES

    out = Path(path)
    if host_cc is not None and shutil.which(host_cc) is None:
        install = next((r.cross_compiler.install for r in ARCHES.values() if r.cross_compiler.executable == host_cc),
                       "install it or put it on PATH")
        raise TargetError(f"{host_cc} not found: {install}")
    if host_cc is None:
        ex.export_library(str(out))
    else:
        ex.export_library(str(out), cc=host_cc)
    return out
