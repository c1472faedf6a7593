"""The lowering context: the choices of one import (target, architecture, kernel per op), decided once.

The converters of :mod:`bhvit_export.targets.converters` read every choice from a :class:`LoweringContext`
that :func:`bhvit_export.targets.importer.bhvit_converters` binds into TVM's convert map for one import, so two
imports for different targets in one process share nothing but the bounded kernel cache (keyed by
target).

Two tables say which kernel each ``bhvit`` op takes on each architecture:

* :data:`KERNELS`: the scheduled kernels an architecture has, ``(kind, architecture) -> builder``;
* :data:`OP_KERNELS`: the kinds each op lowers to, ``(op, architecture) -> kinds``; an empty tuple
  is the op's float Relax lowering (its function body in Relax ops, exact on +-1 data).

Architectures: ``avx512``, ``avx2``, ``sse2`` (x86-64 by vector width, :func:`bhvit_export.targets.arch.arch_of`),
``neon`` (aarch64), ``cuda``, and ``generic`` for any other target, which takes the float Relax
lowering everywhere (the packed CPU schedules were written and checked for x86-64 and aarch64 only).
Adding an architecture is a row in each table.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

import tvm

from bhvit_export.errors import TargetError
from bhvit_export.passes.op_schema import OP_TYPES

#: Kernel PrimFuncs kept across imports (one per kind, shape and target); the least recently used go.
KERNEL_CACHE_SIZE = 256
CPU_ARCHS = ("avx512", "avx2", "sse2", "neon")
ARCHS = CPU_ARCHS + ("cuda", "generic")


@dataclass(frozen=True)
class Kernel:
    """A scheduled kernel: ``builder(*shape, target, **kwargs)`` returns its IRModule (``main``)."""

    kind: str
    builder: str  # "module:function"
    kwargs: tuple[tuple[str, Any], ...] = ()
    takes_target: bool = True
    #: "module:function" of a predicate on the builder's shape (without the target): the shapes this
    #: kernel takes; an op whose kernel refuses a shape takes its float Relax lowering. "" = every shape.
    supports: str = ""

    def takes(self, shape: tuple) -> bool:
        if not self.supports:
            return True
        module, name = self.supports.split(":")
        return bool(getattr(importlib.import_module(module), name)(*shape))

    def build(self, target: tvm.target.Target, shape: tuple) -> tvm.IRModule:
        module, name = self.builder.split(":")
        fn = getattr(importlib.import_module(module), name)
        args = (*shape, target) if self.takes_target else shape
        return fn(*args, **dict(self.kwargs))


_K = "bhvit_export.targets.kernels."
_CPU_KERNELS = {k.kind: k for k in (
    Kernel("pack", _K + "pack:pack_module", (("shift", True),)),
    Kernel("bgemm", _K + "bgemm:bgemm_module"),  # the NEON popcount GEMM on aarch64 (udot with dotprod)
    Kernel("expand_pack", _K + "expand_pack:expand_pack_module"),
    Kernel("sign_pack_nhwc", _K + "bconv_nhwc:sign_pack_module"),
    Kernel("bconv_nhwc", _K + "bconv_nhwc:bconv_module"),
    Kernel("bconv", _K + "bconv:bconv_module"),
    Kernel("scores", _K + "attention:scores_module"),
    Kernel("qd_context", _K + "attention:qd_context_module"),
    Kernel("gsb_context", _K + "gsb_context:gsb_context_module"),
)}
_GPU_KERNELS = {k.kind: k for k in (
    Kernel("pack", _K + "pack:pack_module", (("shift", True),)),  # the CUDA schedule of the TE form
    Kernel("bgemm", _K + "bgemm:bgemm_module"),  # the CUDA schedule (__popcll, shared-memory tiles)
    Kernel("bconv", _K + "gpu_bconv:bconv_module_gpu"),
    Kernel("scores", _K + "gpu_attention:scores_module_gpu"),
    Kernel("qd_context", _K + "gpu_attention:qd_context_module_gpu"),
)}

#: NEON overrides of the CPU kernels where the builder's choice alone is not enough.
_NEON_KERNELS = {k.kind: k for k in (
    # the NEON QD context (kernels/attention_neon.py via qd_context_module) where head dims are whole
    # float32x4 vectors; other shapes keep the float lowering, as on x86
    Kernel("qd_context", _K + "attention:qd_context_module", supports=_K + "attention_neon:qd_supports_shape"),
    # the expand-pack with its six per-channel constants folded into four (kernels/expand_pack_neon.py),
    # shape (M, N, K, ratio, unit_slopes); the converter takes it where those vectors are constants
    Kernel("expand_pack_folded", _K + "expand_pack_neon:folded_module", supports=_K + "expand_pack_neon:supports"),
    # the binary GEMM with its affine folded and its weights transposed at import (kernels/bgemm.py),
    # shape (M, N, K); the converters take it where scale, bias and weights are constants
    Kernel("bgemm_folded", _K + "bgemm:bgemm_folded_module", supports=_K + "neon_gemm:supports_mnk"),
    # the channels-last conv with its affine and border correction folded into one float table
    Kernel("bconv_nhwc_folded", _K + "bconv_nhwc:bconv_folded_module", supports=_K + "bconv_nhwc_neon:supports_folded"),
)}

#: (kind, architecture) -> the kernel's builder on that architecture.
KERNELS: dict[tuple[str, str], Kernel] = {
    **{(kind, arch): k for arch in CPU_ARCHS for kind, k in _CPU_KERNELS.items()},
    **{(kind, "neon"): k for kind, k in _NEON_KERNELS.items()},
    **{(kind, "cuda"): k for kind, k in _GPU_KERNELS.items()},
}

_CPU_OPS: dict[str, tuple[str, ...]] = {
    "BinaryLinear": ("pack", "bgemm"),
    "BinaryExpandPack": ("pack", "expand_pack"),
    "PackedBinaryLinear": ("bgemm",),
    # channels-last pair where a group's channels divide 64 (BHViT: 16, 32), else the channel-first kernel
    "BinaryConv2d": ("sign_pack_nhwc", "bconv_nhwc", "bconv"),
    "BinaryAttentionScores": ("scores",),
    # float: measured faster single thread at Tiny sizes on Sapphire Rapids (0.26-0.38 ms vs
    # 0.45-0.68 ms packed; converters' docstring): packing the levels costs more than the float matmul
    "QDAttentionContext": (),
    "GSBAttentionContext": ("gsb_context",),
}
#: On NEON the QD context is packed: Tiny on Cortex-A72 estimated 102.9 -> 97.3 ms (docs/bench.md);
#: the integer sums are exact in float32, so the result is identical to the float lowering's.
_NEON_OPS: dict[str, tuple[str, ...]] = {
    **_CPU_OPS,
    "QDAttentionContext": ("qd_context",),
    # the folded NEON kernel where it takes the shape and the constants are constants, else expand_pack
    "BinaryExpandPack": ("pack", "expand_pack_folded", "expand_pack"),
    "BinaryLinear": ("pack", "bgemm_folded", "bgemm"),
    "PackedBinaryLinear": ("bgemm_folded", "bgemm"),
    "BinaryConv2d": ("sign_pack_nhwc", "bconv_nhwc_folded", "bconv_nhwc", "bconv"),
}
_GPU_OPS: dict[str, tuple[str, ...]] = {
    "BinaryLinear": ("pack", "bgemm"),
    "BinaryExpandPack": ("pack", "bgemm"),  # the GPU bgemm, the epilogue in Relax, the GPU sign-pack
    "PackedBinaryLinear": ("bgemm",),
    "BinaryConv2d": ("bconv",),
    "BinaryAttentionScores": ("scores",),
    "QDAttentionContext": ("qd_context",),  # not measured against the float lowering yet (no GPU run)
    "GSBAttentionContext": (),  # no GPU kernel yet
}

#: (op, architecture) -> the kernel kinds the op lowers to; () = its float Relax lowering.
OP_KERNELS: dict[tuple[str, str], tuple[str, ...]] = {
    **{(op, arch): kinds for arch in CPU_ARCHS for op, kinds in _CPU_OPS.items()},
    **{(op, "neon"): kinds for op, kinds in _NEON_OPS.items()},
    **{(op, "cuda"): kinds for op, kinds in _GPU_OPS.items()},
    **{(op, "generic"): () for op in OP_TYPES},
}


def architecture(target: tvm.target.Target) -> str:
    """The tables' architecture of ``target`` (see the module docstring)."""
    from bhvit_export.targets.arch import arch_for_triple, arch_of

    kind = target.kind.name
    if kind == "cuda":
        return "cuda"
    if kind != "llvm":
        return "generic"
    triple = str(target.attrs.get("mtriple", ""))
    if triple and arch_for_triple(triple) is None:  # an architecture without a record
        return "generic"
    return arch_of(target).name  # its SIMD level: avx512, avx2, sse2 or neon


@dataclass(frozen=True)
class LoweringContext:
    """What the converters need for one import: the target, its architecture record, the kernel per op."""

    target: tvm.target.Target
    #: The tables' architecture key (``avx512``, ``avx2``, ``sse2``, ``neon``, ``cuda``, ``generic``).
    arch: str
    #: The CPU's record (:func:`bhvit_export.targets.arch.arch_of`; a CUDA target's host), None where there is none.
    record: Optional[Any]
    #: False: every op takes its float Relax lowering (the all-Relax reference path).
    packed: bool
    #: op -> the kernel kinds it lowers to here (the :data:`OP_KERNELS` row, after ``packed``/overrides).
    kernels: Mapping[str, tuple[str, ...]] = field(repr=False)
    #: BinaryConv2d node name -> the padding ``[top, left, bottom, right]`` of the sign-packed grid
    #: it reads, shared by the convs of one input and shift (:func:`bhvit_export.targets.importer.shared_conv_grids`).
    conv_grids: Mapping[str, tuple[int, int, int, int]] = field(default_factory=dict, repr=False, compare=False)
    #: Per import: what converters share (the sign-packed grids already emitted), keyed by the converter.
    shared: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_target(
        cls, target: Any = None, *, packed: bool = True, overrides: Optional[Mapping[str, tuple[str, ...]]] = None
    ) -> "LoweringContext":
        """Resolve ``target`` (default: the host) once. ``overrides``: ``{op: kinds}`` replacing the
        table's choice (e.g. ``{"QDAttentionContext": ("qd_context",)}`` for the opt-in packed QD
        context on CPUs); every kind must exist on the architecture."""
        from bhvit_export.targets.kernels.target_info import as_target, host_target

        tgt = as_target(target) if target is not None else host_target()
        arch = architecture(tgt)
        row = {op: OP_KERNELS[(op, arch)] for op in OP_TYPES}
        for op, kinds in (overrides or {}).items():
            if op not in row:
                raise TargetError(f"lowering override for {op}: not a bhvit op ({', '.join(OP_TYPES)})")
            missing = [k for k in kinds if (k, arch) not in KERNELS]
            if missing:
                raise TargetError(f"lowering override for {op}: no {', '.join(missing)} kernel on {arch}")
            row[op] = tuple(kinds)
        if not packed:
            row = {op: () for op in row}
        return cls(tgt, arch, _record(tgt, arch), packed, MappingProxyType(row))

    def uses(self, op: str, kind: str) -> bool:
        """True when ``op`` lowers to the ``kind`` kernel here."""
        return kind in self.kernels[op]

    def takes(self, op: str, kind: str, *shape: Any) -> bool:
        """True when ``op`` lowers to the ``kind`` kernel here and that kernel takes ``shape``."""
        return self.uses(op, kind) and KERNELS[(kind, self.arch)].takes(tuple(shape))

    def kernel(self, kind: str, *shape: Any) -> tvm.tirx.PrimFunc:
        """The scheduled PrimFunc of ``kind`` for one static ``shape`` on this target (cached, bounded)."""
        spec = KERNELS.get((kind, self.arch))
        if spec is None:
            raise TargetError(f"no {kind} kernel on {self.arch}")
        return _cached_kernel(_KernelKey(spec, tuple(shape), str(self.target), self.target))


def _record(target: tvm.target.Target, arch: str) -> Optional[Any]:
    if arch == "generic" or (arch == "cuda" and target.host is None):
        return None
    from bhvit_export.targets.arch import arch_of

    return arch_of(target)


#: TIR op-pattern kOpaque: FuseOps never fuses an opaque PrimFunc with its neighbours.
_OPAQUE = 8


@dataclass(frozen=True)
class _KernelKey:
    spec: Kernel
    shape: tuple
    target_key: str  # str(target): the target's full JSON (TVM Targets hash by identity)
    target: tvm.target.Target = field(compare=False, hash=False)


@functools.lru_cache(maxsize=KERNEL_CACHE_SIZE)
def _cached_kernel(key: _KernelKey) -> tvm.tirx.PrimFunc:
    """Build, strip the global symbol and mark opaque + scheduled, so the Relax pipeline
    (FuseOps/FuseTIR, the schedule rules) keeps the pre-scheduled kernel intact."""
    func = key.spec.build(key.target, key.shape)["main"]
    attrs = dict(func.attrs) if func.attrs is not None else {}
    func = func.without_attr("global_symbol") if "global_symbol" in attrs else func
    return func.with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)


def kernel_cache_info() -> Any:
    """``functools`` cache statistics of the kernel cache (hits, misses, maxsize, currsize)."""
    return _cached_kernel.cache_info()


def describe() -> str:
    """The op table, one line per op: the kernels on each architecture (``float`` = Relax ops)."""
    archs = ("avx512", "avx2", "neon", "cuda")
    lines = [f"{'op':<24}" + "".join(f"{a:<34}" for a in archs)]
    for op in OP_TYPES:
        lines.append(f"{op:<24}" + "".join(f"{'+'.join(OP_KERNELS[(op, a)]) or 'float':<34}" for a in archs))
    return "\n".join(line.rstrip() for line in lines)
