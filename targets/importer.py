"""Fused ``bhvit`` ONNX -> Relax ``IRModule``.

TVM 0.27's Relax ONNX importer (``tvm.relax.frontend.onnx.from_onnx``) has three gaps this module
closes:

* it dispatches on ``op_type`` only (op domains are ignored) and has no custom-op hook, so the
  converters of :mod:`bhvit_export.targets.converters`, each bound to the import's
  :class:`~bhvit_export.targets.lowering.LoweringContext`, are registered by wrapping the module-level
  ``_get_convert_map`` for the duration of one import (restored afterwards, even on error), and the
  domains are checked here, before anything is converted;
* it never reads model-local functions, so the ``bhvit`` function bodies are never used;
* it needs static shapes: the symbolic batch is fixed, shapes are re-inferred and constant
  sub-graphs folded (onnx-graphsurgeon) before the import.

Every op that is neither a standard op TVM converts nor one of ours is reported in one
:class:`~bhvit_export.errors.TargetError` listing them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from typing import Iterator, Mapping, Optional

import onnx

from bhvit_export.errors import CompileError, TargetError
from bhvit_export.passes.op_schema import DOMAIN

from . import converters as conv
from .lowering import LoweringContext

_STANDARD_DOMAINS = ("", "ai.onnx")
#: Handled by the importer itself, not through the convert map.
_DIRECT_OPS = {"Constant", "If"}
_LOCK = threading.Lock()


def _frontend():
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend


@contextlib.contextmanager
def bhvit_converters(
    target=None,
    *,
    packed: bool = True,
    overrides: Optional[Mapping[str, tuple[str, ...]]] = None,
    context: Optional[LoweringContext] = None,
    conv_grids: Optional[Mapping[str, tuple[int, int, int, int]]] = None,
) -> Iterator[LoweringContext]:
    """Temporarily add the ``bhvit`` converters, bound to one lowering context, to TVM's ONNX convert map.

    The context is ``context``, or :meth:`LoweringContext.for_target` of ``target`` (default: the
    host), ``packed`` (False: every op in plain Relax ops) and ``overrides`` (``{op: kernel kinds}``
    replacing :data:`bhvit_export.targets.lowering.OP_KERNELS`' choice); ``conv_grids``: the shared
    sign-pack grids of the convs (:func:`shared_conv_grids`). Yields the context of this import (a
    copy with its own ``shared`` state). Imports are serialised: TVM's convert map is module-global
    state, restored afterwards.
    """
    if context is None:
        context = LoweringContext.for_target(target, packed=packed, overrides=overrides)
    elif target is not None or not packed or overrides:
        raise TypeError("bhvit_converters: pass either context or target/packed/overrides")
    context = dataclasses.replace(context, conv_grids=dict(conv_grids or {}), shared={})  # per import
    bound = {op: cls.bind(context) for op, cls in conv.CONVERTERS.items()}
    fe = _frontend()
    with _LOCK:
        original = fe._get_convert_map

        def patched() -> dict:
            table = dict(original())
            table.update(bound)
            return table

        fe._get_convert_map = patched
        try:
            yield context
        finally:
            fe._get_convert_map = original


def shared_conv_grids(model: onnx.ModelProto) -> dict[str, tuple[int, int, int, int]]:
    """Node name -> the padding of the sign-packed grid each ``BinaryConv2d`` reads.

    BHViT's GC token mixer runs three binary convs (dilations 1, 3, 5; 'same' padding 1, 3, 5) on
    the same input with the same shift, so the sign bits they pack are the same; only their
    padded grids differ. Convs of one input, one shift (by value) and one group count share one
    grid padded by the largest padding of each side, and each reads it at an offset, so the
    input is packed once instead of three times (Tiny on the Cortex-A72 estimate: two of three
    sign-packs, ~0.5 ms). A conv that shares with none keeps its own padding.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[tuple, list[tuple[str, tuple[int, ...]]]] = {}
    for node in model.graph.node:
        if (node.op_type != "BinaryConv2d" or node.domain != DOMAIN or not node.name or len(node.input) < 2
                or node.input[1] not in inits):
            continue
        attrs = {a.name: a for a in node.attribute}
        pads = tuple(int(v) for v in attrs["pads"].ints) if "pads" in attrs else (0, 0, 0, 0)
        shift = numpy_helper.to_array(inits[node.input[1]])
        key = (node.input[0], shift.dtype.str, shift.shape, shift.tobytes(), int(attrs["group"].i) if "group" in attrs else 1)
        groups.setdefault(key, []).append((node.name, pads))
    grids: dict[str, tuple[int, int, int, int]] = {}
    for members in groups.values():
        if len(members) > 1 and all(len(p) == 4 for _, p in members):
            grid = tuple(max(p[i] for _, p in members) for i in range(4))
            grids.update({name: grid for name, _ in members})  # type: ignore[misc]
    return grids


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Every node type (``domain.op_type``) this importer cannot lower, sorted and deduplicated.

    Standard-domain ops must be in TVM's convert map, ``bhvit`` ops must be ours; our op names in
    another domain, and any other domain, are unsupported.
    """
    standard = set(_frontend()._get_convert_map()) | _DIRECT_OPS
    bad = set()
    for node in model.graph.node:
        if node.domain in _STANDARD_DOMAINS:
            ok = node.op_type in standard and node.op_type not in conv.CONVERTERS
        elif node.domain == DOMAIN:
            ok = node.op_type in conv.CONVERTERS
        else:
            ok = False
        if not ok:
            bad.add(f"{node.domain}.{node.op_type}" if node.domain else node.op_type)
    return sorted(bad)


def require_lowerable(model: onnx.ModelProto) -> None:
    """CompileError naming every op type :func:`unsupported_ops` finds (the one check: ``compile``
    runs it before its golden reference, :func:`import_fused` before importing)."""
    bad = unsupported_ops(model)
    if bad:
        raise CompileError(f"cannot lower to TVM: unsupported op types {', '.join(bad)}")


def check_batch(batch: int, name: str = "batch") -> None:
    """TargetError for a batch below 1 (``name``: how the caller's user spells it, e.g. ``--batch``)."""
    if batch < 1:
        raise TargetError(f"{name} must be >= 1, got {batch}")


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Copy of ``model`` with every symbolic leading dim of the graph inputs/outputs set to ``batch``
    and stale intermediate shapes dropped (re-inferred afterwards)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in list(out.graph.input) + list(out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                if i != 0:
                    raise TargetError(
                        f"{vi.name}: only the batch (axis 0) may be symbolic, axis {i} is {d.dim_param!r}"
                    )
                d.Clear()
                d.dim_value = batch
    del out.graph.value_info[:]
    return out


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Infer static shapes and fold constant sub-graphs (shape arithmetic, Reshape targets)."""
    import onnx_graphsurgeon as gs

    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph.fold_constants().cleanup().toposort()
    folded = gs.export_onnx(graph)
    del folded.functions[:]
    folded.functions.extend(model.functions)
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    folded.ir_version = model.ir_version
    return onnx.shape_inference.infer_shapes(folded, data_prop=True)


def prepare(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """The static-shape, folded copy of ``model`` that :func:`import_fused` hands to TVM."""
    check_batch(batch)
    if len(model.graph.input) != 1:
        names = [i.name for i in model.graph.input]
        raise TargetError(f"expected one graph input (pixel_values), got {names}")
    return _fold(_fix_batch(model, batch))


def import_fused(
    model: onnx.ModelProto,
    batch: int = 1,
    *,
    target=None,
    packed: bool = True,
    overrides: Optional[Mapping[str, tuple[str, ...]]] = None,
    context: Optional[LoweringContext] = None,
):
    """Import a fused (or plain reference) BHViT ONNX model as a Relax ``IRModule`` ``main``.

    ``batch`` fixes the symbolic batch; weights become constants (``keep_params_in_input=False``).
    ``target``/``packed``/``overrides``/``context``: see :func:`bhvit_converters`. Raises
    :class:`CompileError` naming every op that cannot be lowered.
    """
    require_lowerable(model)
    static = prepare(model, batch)
    from tvm.relax.frontend.onnx import from_onnx

    inp = static.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    grids = shared_conv_grids(static)
    with bhvit_converters(target, packed=packed, overrides=overrides, context=context, conv_grids=grids), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx.checker cannot see the bhvit function bodies' types
        mod = from_onnx(static, shape_dict={inp.name: shape}, keep_params_in_input=False)
    return mod

