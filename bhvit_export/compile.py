"""ONNX -> deploy bundle: the one library call behind ``bhvit-export compile``.

Steps (each timed and announced, since a Tiny build takes tens of seconds): resolve the target, load
and check the ONNX, import it into Relax with our converters, build with our schedules, link the
library (a cross compiler for aarch64 hosts), take the golden inputs and reference outputs, add the
native runner and the target's TVM runtime where we can build them, write the manifest with the
SHA-256 of every file, and rename the finished folder into place (or pack it as a ``.tar``).
Nothing is left at the output path unless every step succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .bundle import manifest as mf
from .errors import BundleError, CompileError, ModelFileError, TargetError
from .golden import MAX_GOLDEN_COUNT, MAX_IMAGE_SIZE, Golden, golden_of_model
from .sensitivity import sensitivity_of_model

Progress = Callable[[str], None]
#: Largest compiled input batch, float32 [batch, 3, S, S] in bytes: beyond it the golden inputs and
#: TVM's buffers would not fit a deploy target anyway, and a hostile file could exhaust memory here.
MAX_INPUT_BYTES = 1 << 30


@dataclass
class CompileReport:
    """What ``compile_model`` did (``lines`` for humans, ``to_json`` for ``--json``)."""

    model: str
    output: str
    target: dict[str, Any]
    batch: int
    golden_source: str
    native: bool
    bytes: dict[str, int] = field(default_factory=dict)  # per bundle file
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "output": self.output,
            "target": self.target,
            "batch": self.batch,
            "golden_source": self.golden_source,
            "native_runner": self.native,
            "bytes": self.bytes,
            "total_bytes": sum(self.bytes.values()),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        s = self.seconds
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in s.items() if k != "total")
        lib = self.bytes.get(mf.LIBRARY, 0)
        out = [
            f"compiled for {self.target['name']} ({self.target['arch']}, {self.target['device']}) at batch {self.batch} "
            f"in {s.get('total', 0.0):.1f} s ({steps})",
            f"wrote {self.output}: library {lib / 2**20:.1f} MiB, bundle {sum(self.bytes.values()) / 2**20:.1f} MiB, "
            f"golden reference from {self.golden_source}"
            + ("" if self.native else ", no native runner"),
        ]
        return out + [f"note: {n}" for n in self.notes]


def _load_golden(
    model: Any, inputs: Optional[Path], outputs: Optional[Path]
) -> tuple[Golden, list[str]]:
    """User-given golden files, else the PyTorch pair recorded by ``to-onnx``, else onnxruntime."""
    if (inputs is None) != (outputs is None):
        raise ModelFileError("--golden-inputs and --golden-outputs go together")
    if inputs is not None and outputs is not None:
        x, y = (_load_npy(p) for p in (inputs, outputs))
        if x.shape[0] != y.shape[0]:
            raise ModelFileError(f"--golden-inputs has {x.shape[0]} rows, --golden-outputs {y.shape[0]}")
        return Golden(x.astype(np.float32), y.astype(np.float32), "user"), []
    golden = golden_of_model(model)
    if golden is not None:
        return golden, []
    return _ort_golden(model), [
        "the ONNX has no PyTorch reference (bhvit.golden metadata; re-export it with to-onnx): "
        "the golden outputs come from onnxruntime on this same ONNX"
    ]


def _load_npy(path: Path) -> np.ndarray:
    from .limits import MAX_GOLDEN_BYTES, regular_file

    regular_file(path, "golden file", ModelFileError)  # a FIFO would block np.load forever
    try:
        # mmap first: a header claiming a huge shape fails here instead of allocating it
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable .npy array ({e})") from None
    if arr.dtype.kind != "f" or arr.ndim < 2:
        raise ModelFileError(f"{path}: expected a float array [N, ...], got {arr.dtype}{list(arr.shape)}")
    if not 1 <= arr.shape[0] <= MAX_GOLDEN_COUNT:
        raise ModelFileError(f"{path}: {arr.shape[0]} rows; golden files hold 1 to {MAX_GOLDEN_COUNT}")
    if arr.nbytes > MAX_GOLDEN_BYTES:
        raise ModelFileError(f"{path}: {arr.nbytes / 2**20:.0f} MiB, beyond the supported {MAX_GOLDEN_BYTES // 2**20} MiB of golden data")
    return np.array(arr)


def _ort_golden(model: Any) -> Golden:
    """Fallback reference: onnxruntime on the model itself (the bhvit function bodies run as ONNX)."""
    import onnxruntime as ort

    from .golden import DEFAULT_COUNT, DEFAULT_SEED, RECIPE, recipe_inputs

    dims = model.graph.input[0].type.tensor_type.shape.dim
    size = dims[-1].dim_value or 224
    x = recipe_inputs(RECIPE, DEFAULT_COUNT, int(size), DEFAULT_SEED)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    y = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    return Golden(x, y.astype(np.float32), "onnxruntime")


def check_image_model(model: Any, batch: int) -> int:
    """The image side ``S`` of a model with one float32 input ``[N, 3, S, S]`` and one float output
    ``[N, classes]``; a ModelFileError for anything else, before TVM or the golden inputs allocate it."""
    from onnx import TensorProto

    def dims(vi: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]

    def show(shape: list[Any]) -> str:
        return "[" + ", ".join(map(str, shape)) + "]"

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelFileError(
            f"not a BHViT image model: expected one input and one output, got inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in model.graph.output]}"
        )
    inp, out = inputs[0], model.graph.output[0]
    shape, oshape = dims(inp), dims(out)
    static = all(isinstance(d, int) and d > 0 for d in shape[1:])
    if (
        inp.type.tensor_type.elem_type != TensorProto.FLOAT
        or len(shape) != 4
        or not static
        or shape[1] != 3
        or shape[2] != shape[3]
        or (isinstance(shape[0], int) and shape[0] not in (batch, 0))
    ):
        raise ModelFileError(
            f"not a BHViT image model: input '{inp.name}' is {show(shape)} "
            f"(elem type {inp.type.tensor_type.elem_type}), expected float32 [N, 3, S, S] with N symbolic or {batch}"
        )
    size = int(shape[2])
    if size > MAX_IMAGE_SIZE:
        raise ModelFileError(f"input '{inp.name}' is {show(shape)}: image size {size} is beyond the supported {MAX_IMAGE_SIZE}")
    if batch * 3 * size * size * 4 > MAX_INPUT_BYTES:
        raise ModelFileError(
            f"--batch {batch} at {size}x{size} is {batch * 3 * size * size * 4 / 2**30:.1f} GiB per input, "
            f"beyond the supported {MAX_INPUT_BYTES / 2**30:.0f} GiB"
        )
    if out.type.tensor_type.elem_type != TensorProto.FLOAT or len(oshape) != 2:
        raise ModelFileError(f"not a BHViT image model: output '{out.name}' is {show(oshape)}, expected float32 [N, classes]")
    return size


def _check_golden(g: Golden, model: Any, size: int) -> None:
    """Golden pairs must fit the model and be finite: a bundle with NaN references passes nothing."""
    want = [3, size, size]
    if list(g.inputs.shape[1:]) != want:
        raise ModelFileError(f"golden inputs are {list(g.inputs.shape)}, the model takes [N, {', '.join(map(str, want))}]")
    classes = model.graph.output[0].type.tensor_type.shape.dim[1]
    if g.outputs.ndim != 2 or (classes.HasField("dim_value") and g.outputs.shape[1] != classes.dim_value):
        raise ModelFileError(
            f"golden outputs are {list(g.outputs.shape)}, the model returns [N, {classes.dim_value or classes.dim_param}]"
        )
    for what, arr in (("inputs", g.inputs), ("outputs", g.outputs)):
        if not np.isfinite(arr).all():
            raise ModelFileError(f"golden {what} ({g.source}) contain NaN or Inf")


def _fit_batch(g: Golden, batch: int) -> Golden:
    """Repeat rows so the count is a multiple of the compiled batch (the runner feeds whole batches)."""
    count = -(-len(g.inputs) // batch) * batch
    if count == len(g.inputs):
        return g
    idx = np.arange(count) % len(g.inputs)
    return Golden(g.inputs[idx], g.outputs[idx], g.source)


def _export(ex: Any, spec: Any, path: Path) -> None:
    """Link the library for the target's CPU (the cross g++ for aarch64); a failure is one line."""
    from bhvit_export.targets.native_build import export_library

    from . import background

    try:  # LLVM's code generation runs here, seconds of C++: in a worker, so Ctrl-C acts at once
        background.call(lambda: export_library(ex, path, spec.arch))
    except TargetError:
        raise
    except OSError:
        raise  # the caller says "cannot write -o: <the OS's reason>"
    except Exception as e:  # the compiler's stderr is in the message; keep its first line
        if "No space left on device" in str(e):
            raise OSError(28, "No space left on device") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"linking the library for {spec.name} failed: {first}") from None


def _require_linker(arch: str) -> None:
    """The compiler that links the library for ``arch`` is there: the cross g++ of its architecture
    record on another host, TVM's default C++ compiler on a host of that architecture."""
    from bhvit_export.targets.toolchain import cross_compiler

    if cross_compiler(arch) is None:
        from tvm.support import cc

        if cc.get_cc() is None:  # what export_library links the host library with
            raise TargetError("no C++ compiler to link the library (g++, clang++ or $CXX): install it with `apt-get install g++`")


def check_compile_output(src: Path, out: Path, as_tar: bool, golden: list[Path], native: bool) -> None:
    """``-o`` checks before anything slow: not an input, not a device or FIFO, a writable folder with
    room for the bundle, and an existing folder (or .tar) replaced only when it is a bundle of ours."""
    from .bundle.ownership import why_not_ours
    from .output_target import check_output

    # A lower estimate: the library is ~1.3x the fused ONNX (micro: 7.1 MiB from 5.3 MiB); the runner
    # and the x86_64 TVM runtime libraries are ~6 MiB.
    need = (src.stat().st_size * 5 // 4) if src.is_file() else 0
    if native:
        need += 6 * 2**20
    check_output(out, folder=not as_tar, error=BundleError, inputs=[src, *golden],
                 replaceable=lambda p: why_not_ours(p, archive=as_tar), need_bytes=need)


def _may_replace(as_tar: bool) -> Callable[[Path], None]:
    """The check ``atomic_path`` runs right before replacing an existing bundle (it may have changed)."""
    from .bundle.ownership import why_not_ours

    def check(path: Path) -> None:
        why = why_not_ours(path, archive=as_tar)
        if why is not None:
            raise BundleError(f"-o {path} changed during the build and is no longer a bundle of ours ({why}); "
                              "refusing to replace it")

    return check


def config_of_model(model: Any) -> Optional[dict[str, Any]]:
    """The ``bhvit.config`` metadata, checked (a damaged one is a ModelFileError before any build)."""
    from .config import BHViTConfig
    from .errors import BhvitError
    from .limits import parse_json

    text = next((p.value for p in model.metadata_props if p.key == "bhvit.config"), None)
    if text is None:
        return None
    try:
        obj = parse_json(text, "bhvit.config metadata", ModelFileError)
        if not isinstance(obj, dict):
            raise ModelFileError(f"a JSON object, got {type(obj).__name__}")
        BHViTConfig.from_json(obj)
    except BhvitError as e:
        raise ModelFileError(f"bhvit.config metadata is damaged: {str(e).removeprefix('bhvit.config metadata: ')}") from None
    return obj


def _add_native(spec: Any, root: Path, say: Progress) -> tuple[Optional[dict[str, Any]], list[str]]:
    """Put the native runner and the target's TVM runtime libraries in ``runtime/`` (CPU targets)."""
    if spec.device != "cpu":
        return None, ["no native runner for CUDA bundles: verify them with the Python runtime"]
    try:
        from bhvit_export.targets.native_build import build_runner
        from bhvit_export.targets.runtime_libs import runtime_libs
    except ImportError:
        return None, ["native runner unavailable in this build"]
    say(f"adding the native runner and the {spec.arch} TVM runtime")
    rt = root / mf.RUNTIME_DIR
    rt.mkdir()
    try:
        libs = [Path(p) for p in runtime_libs(spec.arch)]
        with tempfile.TemporaryDirectory() as tmp:
            runner = Path(build_runner(spec.arch, Path(tmp)))
            shutil.copy2(runner, rt / "bhvit-run")
        for lib in libs:
            shutil.copy2(lib, rt / lib.name)
    except TargetError as e:
        shutil.rmtree(rt)
        return None, [f"no native runner: {e}"]
    return {
        "runner": f"{mf.RUNTIME_DIR}/bhvit-run",
        "libs": [f"{mf.RUNTIME_DIR}/{lib.name}" for lib in libs],
    }, []


@dataclass
class _Loaded:
    """The checked model and what the bundle takes from it (golden pairs fitted to the batch)."""

    model: Any
    config: Optional[dict[str, Any]]
    golden: Golden
    notes: list[str]


def _check_tools(spec: Any) -> None:
    """The linker (and nvcc for CUDA) are there: fail before the long build, with what to install."""
    _require_linker(spec.arch)
    if spec.device == "cuda":
        from bhvit_export.targets.build_cuda import require_nvcc

        require_nvcc()  # likewise: before the load, not deep in the build


def _load_checked(
    src: Path, batch: int, allow_float: bool, golden_inputs: Optional[Path], golden_outputs: Optional[Path], say: Progress
) -> _Loaded:
    """Load the ONNX and check everything a build needs from it before TVM sees it: an image model of
    ours, undamaged metadata, ops we can lower, and golden pairs that fit (repeated to whole batches)."""
    from bhvit_export.targets.importer import require_lowerable

    from .census import load_onnx
    from .file_kinds import expect_onnx
    from .graph_kind import require_binary_ops

    expect_onnx(src)  # a checkpoint or a bundle given by mistake: say which command takes it
    say(f"loading {src}")
    model = load_onnx(src)
    size = check_image_model(model, batch)
    cfg = config_of_model(model)  # damaged metadata fails here, not after the build
    require_lowerable(model)  # before onnxruntime runs the model for a golden reference
    float_notes = require_binary_ops(model, src, allow_float)
    golden, notes = _load_golden(model, golden_inputs, golden_outputs)
    _check_golden(golden, model, size)
    return _Loaded(model, cfg, _fit_batch(golden, batch), float_notes + notes)


def _build(loaded: _Loaded, src: Path, spec: Any, batch: int, say: Progress, times: dict[str, float]) -> Any:
    """Import into Relax with our converters and build for the target (each a logged TVM step)."""
    from bhvit_export.targets.build import build
    from bhvit_export.targets.importer import import_fused

    from .progress import long_step
    from .tvm_failure import tvm_step

    t = time.perf_counter()
    say(f"importing into TVM Relax (batch {batch})")
    mod = tvm_step(f"importing {src.name}", lambda: import_fused(loaded.model, batch=batch, target=spec.target), loaded.notes)
    times["import"] = time.perf_counter() - t
    t = time.perf_counter()
    with long_step(say, f"building for {spec.target.kind.name} {spec.name} (this takes a while)"):
        ex = tvm_step(f"building {src.name} for {spec.name}", lambda: build(mod, spec.target), loaded.notes)
    times["build"] = time.perf_counter() - t
    return ex


def _target_info(spec: Any, ex: Any) -> dict[str, Any]:
    """The manifest's ``target``: the resolved target, and for CUDA how its device code is shipped."""
    info = spec.to_json()
    if spec.device == "cuda":
        from bhvit_export.targets.build_cuda import device_code_format

        # "binary": compiled sm_XX code; "source": CUDA C the device must JIT (needs NVRTC there)
        info["device_code"] = device_code_format(ex)
    return info


def _manifest(src: Path, loaded: _Loaded, batch: int, target_info: dict[str, Any], native_info: Optional[dict[str, Any]]) -> mf.Manifest:
    """The manifest of a compiled bundle (without ``files``: the writer hashes what is there)."""
    import tvm
    import tvm_ffi

    from . import __version__

    model, golden = loaded.model, loaded.golden
    meta = {p.key: p.value for p in model.metadata_props}
    return mf.Manifest(
        tool_version=__version__,
        tvm_version=tvm.__version__,
        tvm_ffi_version=tvm_ffi.__version__,
        target=target_info,
        model={
            "source": src.name,
            "source_sha256": mf.sha256_file(src),
            "config": loaded.config,
            "paper_config": meta.get("bhvit.paper_config"),
            "sensitivity": sensitivity_of_model(model),  # read by verify (reference_checks)
        },
        input={"name": model.graph.input[0].name, "shape": [batch] + list(golden.inputs.shape[1:]), "dtype": "float32"},
        output={"name": model.graph.output[0].name, "shape": [batch] + list(golden.outputs.shape[1:]), "dtype": "float32"},
        golden={
            "inputs": mf.GOLDEN_INPUTS,
            "reference": mf.GOLDEN_REFERENCE,
            "source": golden.source,
            "count": int(len(golden.inputs)),
        },
        native=native_info,
    )


def compile_model(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    target: str,
    mcpu: Optional[str] = None,
    batch: int = 1,
    golden_inputs: Optional[Path] = None,
    golden_outputs: Optional[Path] = None,
    native: bool = True,
    allow_float: bool = False,
    progress: Optional[Progress] = None,
) -> CompileReport:
    """Compile the (fused) ONNX at ``model_path`` for ``target`` into a bundle at ``out_path``.

    ``out_path`` ending in ``.tar`` writes the archive form. Raises BhvitError subclasses (exit 2)
    for bad models, targets and missing toolchains; nothing is written unless all steps succeed.
    A graph without bhvit ops (the float reference) is refused unless ``allow_float``.
    """
    from bhvit_export.targets.importer import check_batch
    from bhvit_export.targets.target_spec import resolve

    from .bundle.writer import write_bundle, write_golden
    from .layer_map import LAYERS_FILE, write_layers

    say = progress or (lambda _msg: None)
    src, out = Path(model_path), Path(out_path)
    check_batch(batch, "--batch")
    as_tar = out.suffix == ".tar"
    check_compile_output(src, out, as_tar, [p for p in (golden_inputs, golden_outputs) if p is not None], native)
    times: dict[str, float] = {}
    t_all = t = time.perf_counter()
    spec = resolve(target, mcpu=mcpu)
    _check_tools(spec)
    times["target"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = _load_checked(src, batch, allow_float, golden_inputs, golden_outputs, say)
    times["load"] = time.perf_counter() - t
    ex = _build(loaded, src, spec, batch, say, times)
    t = time.perf_counter()
    target_info = _target_info(spec, ex)
    times["build"] += time.perf_counter() - t  # the device-code query is part of the build
    native_info: Optional[dict[str, Any]] = None
    started: dict[str, float] = {}

    def fill(root: Path) -> mf.Manifest:
        nonlocal native_info
        t = time.perf_counter()
        say(f"linking {mf.LIBRARY}")
        _export(ex, spec, root / mf.LIBRARY)
        times["link"] = time.perf_counter() - t
        t = time.perf_counter()
        write_golden(root, loaded.golden.inputs, loaded.golden.outputs)
        write_layers(loaded.model, root / LAYERS_FILE)  # verify --profile names model layers with it
        times["golden"] = time.perf_counter() - t
        t = time.perf_counter()
        native_info, native_notes = _add_native(spec, root, say) if native else (None, [])
        loaded.notes.extend(native_notes)
        times["native"] = time.perf_counter() - t
        started["write"] = time.perf_counter()
        return _manifest(src, loaded, batch, target_info, native_info)

    manifest = write_bundle(out, fill, may_replace=_may_replace(as_tar))
    times["write"] = time.perf_counter() - started["write"]  # manifest, hashes, modes, (tar), the rename into place
    times["total"] = time.perf_counter() - t_all
    return CompileReport(
        model=str(src),
        output=str(out),
        target=spec.to_json(),
        batch=batch,
        golden_source=loaded.golden.source,
        native=native_info is not None,
        bytes={k: v["bytes"] for k, v in manifest.files.items()},
        seconds=times,
        notes=loaded.notes,
    )


# ``from bhvit_export import compile``: this module is also the public function (see api.py).
from .api import compile as _api_compile, make_callable as _make_callable  # noqa: E402

_make_callable(__name__, _api_compile)
