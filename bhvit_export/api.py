"""The public Python API: ``from bhvit_export import export, compile, verify``.

Each function mirrors its command (``to-onnx``, ``compile``, ``verify``) with the same options and
defaults, runs the same library call, and returns the same report object (``.to_json()`` is what
``--json`` prints, ``.lines()`` what the command prints). Errors are the same typed
:class:`~bhvit_export.errors.BhvitError` subclasses the CLI turns into ``error: ...`` lines, so a
caller can catch them by stage. ``verify`` returns its report also when the outputs are outside the
tolerances (the CLI's exit 1): read ``report.passed``.

Why the names are modules too: ``bhvit_export.export``, ``bhvit_export.compile`` and
``bhvit_export.verify`` are also the subpackages/modules that implement them, and Python sets a
package attribute to its submodule whenever that submodule is imported, so a plain function of
the same name in ``__init__`` would be overwritten by the first ``import bhvit_export.compile``.
Instead each of those modules is made callable (:func:`make_callable`): ``compile(...)`` calls the
function below, ``bhvit_export.compile.compile_model`` still works. Nothing heavy is imported until
a function runs, so ``python -m bhvit_export --help`` stays instant.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .limits import DEFAULT_TIMEOUT_S  # light: no torch, onnx or TVM

if TYPE_CHECKING:
    from .compile import CompileReport
    from .export.convert import ConvertReport
    from .verify.verify import VerifyReport

PathLike = os.PathLike[str] | str
Progress = Callable[[str], None]


def export(
    checkpoint: PathLike,
    output: PathLike,
    *,
    reference: bool = False,
    entry: str = "auto",
    config: Optional[PathLike] = None,
    opset: Optional[int] = None,
    validate: bool = True,
    progress: Optional[Progress] = None,
) -> ConvertReport:
    """``bhvit-export to-onnx CHECKPOINT -o OUTPUT``: the fused ONNX (``reference=True``: the float one).

    ``entry``: auto | model | model_ema | state_dict | bare; ``config``: the official config.json
    to check the weights against; ``progress``: called with one line per step; ``validate=False`` is
    ``--no-validate`` (the verdict is ``report.validation.passed``; a failure does not raise).
    """
    from .export.convert import convert_checkpoint

    return convert_checkpoint(
        checkpoint, output, reference=reference, entry=entry, config_json=config, opset=opset, validate=validate,
        progress=progress,
    )


def compile(  # noqa: A001 - the command's name, on purpose
    model: PathLike,
    output: PathLike,
    *,
    target: str = "x86_64",
    mcpu: Optional[str] = None,
    batch: int = 1,
    golden_inputs: Optional[PathLike] = None,
    golden_outputs: Optional[PathLike] = None,
    native: bool = True,
    allow_float: bool = False,
    progress: Optional[Progress] = None,
) -> CompileReport:
    """``bhvit-export compile MODEL -o OUTPUT``: a bundle folder (or ``NAME.tar``) for ``target``.

    ``target``: x86_64 (this CPU unless ``mcpu``), aarch64, jetson-orin, a TVM tag or a JSON target;
    ``native=False`` is ``--no-native``; ``allow_float`` is ``--allow-float``.
    """
    from .compile import compile_model

    return compile_model(
        model,
        output,
        target=target,
        mcpu=mcpu,
        batch=batch,
        golden_inputs=Path(golden_inputs) if golden_inputs is not None else None,
        golden_outputs=Path(golden_outputs) if golden_outputs is not None else None,
        native=native,
        allow_float=allow_float,
        progress=progress,
    )


def verify(
    bundle: PathLike,
    *,
    runs: int = 20,
    warmup: int = 3,
    threads: Optional[int] = None,
    rpc: Optional[str] = None,
    tracker: Optional[str] = None,
    key: Optional[str] = None,
    devices: int = 1,
    native: bool = False,
    profile: bool = False,
    torch: bool = True,
    images: Optional[PathLike] = None,
    limit: Optional[int] = None,
    reference: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    min_cosine: Optional[float] = None,
    max_abs_over_std: Optional[float] = None,
    min_top1: Optional[float] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Optional[Progress] = None,
) -> VerifyReport:
    """``bhvit-export verify BUNDLE``: check, run, compare and time; ``report.passed`` says the verdict.

    ``torch=False`` is ``--no-torch``; ``limit`` is ``--limit`` (with ``images``). A bad bundle
    raises BundleError (the CLI's exit 2); a failed comparison does not raise.
    """
    from .errors import BundleError
    from .verify.verify import VerifyOptions, verify_bundle

    if sum(bool(v) for v in (rpc, tracker, native)) > 1:
        raise BundleError("choose one of --rpc, --tracker and --native")
    tol = {
        k: float(v)
        for k, v in (("min_cosine", min_cosine), ("max_abs_over_std", max_abs_over_std), ("min_top1_agreement", min_top1))
        if v is not None
    }
    opts = VerifyOptions(
        runs=runs,
        warmup=warmup,
        threads=threads,
        rpc=rpc,
        tracker=tracker,
        key=key,
        devices=devices,
        native=native,
        tolerances=tol,
        torch_latency=torch,
        profile=profile,
        images=Path(images) if images is not None else None,
        images_limit=limit,
        reference=Path(reference) if reference is not None else None,
        labels=Path(labels) if labels is not None else None,
        timeout=timeout,
    )
    return verify_bundle(bundle, opts, progress=progress)


class _CallableModule(types.ModuleType):
    """A module that is also the API function of its name (see the module docstring)."""

    __api_function__: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__api_function__(*args, **kwargs)


def make_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``function`` (with its signature and docstring)."""
    module = sys.modules[module_name]
    module.__class__ = _CallableModule
    module.__api_function__ = function  # type: ignore[attr-defined]
    module.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
