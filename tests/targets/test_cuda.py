"""CUDA build path (``targets/schedules/gpu/packed.py``, ``targets/build_cuda.py``), run without a GPU.

* GPU schedules' numerics, on the CPU: each GPU-scheduled kernel is serialised (thread loops made
  serial, shared/local buffers global: ``packed.serialize_threads``), built for LLVM and
  compared bit-exactly with the numpy references on random small shapes, ragged tiles included;
* the kernels compile for CUDA (nvcc) with ``__popcll`` and a register tile of the planned size;
* the micro fixture, fused, compiles for the Jetson Orin tag into an aarch64 shared library and for
  sm_90 with an x86-64 host into an x86-64 one (ELF ``e_machine`` checked);
* ``build()`` dispatches CUDA targets, an unscheduled PrimFunc is named in a ``TargetError``;
* ``benchmarks/cuda_device_check.py``'s metrics agree with ``tests/helpers.py``.

Nothing here runs CUDA code; ``benchmarks/cuda_device_check.py`` does that on a GPU machine.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.targets.build_cuda import (  # noqa: E402
    JETSON_ORIN,
    X86_SM90,
    build_cuda,
    cuda_compile_scope,
    device_code_format,
    export_cuda_library,
    require_gpu_schedules,
    unscheduled_functions,
)
from bhvit_export.targets.arch import AARCH64  # noqa: E402
from bhvit_export.targets.kernels import and_popcount, bgemm, pack  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.schedules.gpu.packed import (  # noqa: E402
    GemmTiles,
    is_cuda,
    schedule_popcount_gemm_gpu,
    serialize_threads,
)

REPO = Path(__file__).resolve().parents[2]
CPU = "llvm"  # serialised GPU kernels are plain loops: generic x86-64 runs them anywhere
DIM = st.integers(1, 70)  # > one 16-row / 32-column block tile, and ragged
KDIM = st.one_of(st.integers(1, 700), st.sampled_from([1, 63, 64, 65, 512, 513, 576]))  # Kw up to 11 > kc=8
SEED = st.integers(0, 2**32 - 1)
PROPS = settings(max_examples=12, deadline=None)

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (CUDA toolkit)")
AARCH64_CXX = AARCH64.cross_compiler.executable
needs_cross = pytest.mark.skipif(
    shutil.which(AARCH64_CXX) is None, reason=f"{AARCH64_CXX} not installed (g++-aarch64-linux-gnu)"
)

#: ELF e_machine values.
EM_X86_64, EM_AARCH64 = 62, 183


def _cpu_run(mod: tvm.IRModule, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    lib = tvm.compile(serialize_threads(mod), target=CPU).mod
    dev = tvm.cpu()
    out_t = tvm.runtime.tensor(out, dev)
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays), out_t)
    return out_t.numpy()


@functools.lru_cache(maxsize=None)
def _gpu_pack(m: int, k: int, shift: bool) -> tvm.IRModule:
    return pack.pack_module(m, k, JETSON_ORIN, shift=shift)


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Float data with exact zeros, -0.0 and NaN sprinkled in (they must all pack as +1)."""
    x = rng.standard_normal(shape).astype(np.float32)
    hit = rng.random(shape) < 0.05
    x[hit] = rng.choice(np.array([0.0, -0.0, np.nan], np.float32), size=int(hit.sum()))
    return x


def _packed(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return ref.pack_bits(rng.standard_normal((rows, k)))


# --- dispatch and the GPU schedules' structure ---------------------------------------------------


def test_cuda_targets_dispatch_to_gpu_schedules() -> None:
    assert is_cuda(JETSON_ORIN) and is_cuda(X86_SM90) and not is_cuda({"kind": "llvm"})
    for mod in (
        pack.pack_module(5, 100, JETSON_ORIN, shift=True),
        bgemm.bgemm_module(37, 48, 300, JETSON_ORIN),
        and_popcount.and_popcount_module(37, 48, 300, X86_SM90),
    ):
        script = mod.script()
        assert 'thread="threadIdx.x"' in script and 'thread="blockIdx.x"' in script
    # the CPU path is untouched: no thread bindings, a parallel loop
    cpu = bgemm.bgemm_module(37, 48, 300, {"kind": "llvm", "mcpu": "sapphirerapids"}).script()
    assert "thread_binding" not in cpu and "T.parallel" in cpu


def test_serialize_threads_removes_every_gpu_construct() -> None:
    mod = serialize_threads(bgemm.bgemm_module(37, 48, 300, JETSON_ORIN))
    script = mod.script()
    assert "thread_binding" not in script and '"shared"' not in script and '"local"' not in script


# --- GPU schedules' numerics, serialised on the CPU ----------------------------------------------


@PROPS
@given(m=DIM, k=KDIM, shift=st.booleans(), seed=SEED)
@example(m=1, k=1, shift=False, seed=0)
def test_gpu_pack_bit_exact(m: int, k: int, shift: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _signs(rng, (m, k))
    out = np.zeros((m, ref.num_words(k)), np.uint64)
    if shift:
        sh = rng.standard_normal(k).astype(np.float32)
        got, want = _cpu_run(_gpu_pack(m, k, True), x, sh, out=out), ref.pack_bits(x + sh)
    else:
        got, want = _cpu_run(_gpu_pack(m, k, False), x, out=out), ref.pack_bits(x)
    np.testing.assert_array_equal(got, want)


@PROPS
@given(m=DIM, n=DIM, k=KDIM, seed=SEED)
@example(m=37, n=48, k=576, seed=1)  # Kw = 9: one full 8-word chunk and a 1-word tail
def test_gpu_bgemm_int32_bit_exact(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, w = _packed(rng, m, k), _packed(rng, n, k)
    mod = bgemm.bgemm_module(m, n, k, JETSON_ORIN, out_dtype="int32")
    got = _cpu_run(mod, a, w, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, ref.binary_gemm_ref(a, w, k))


@PROPS
@given(m=DIM, n=DIM, k=KDIM, seed=SEED)
def test_gpu_bgemm_float_epilogue(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, w = _packed(rng, m, k), _packed(rng, n, k)
    scale = rng.uniform(0.01, 2.0, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    mod = bgemm.bgemm_module(m, n, k, X86_SM90)
    got = _cpu_run(mod, a, w, scale, bias, out=np.zeros((m, n), np.float32))
    want = ref.binary_linear_ref(a, w, k, scale, bias)
    magnitude = np.abs(ref.binary_gemm_ref(a, w, k) * scale[None, :]) + np.abs(bias)[None, :]
    assert np.all(np.abs(got - want) <= 1e-5 * magnitude + 1e-30)


@PROPS
@given(m=DIM, n=DIM, k=KDIM, seed=SEED)
@example(m=2, n=13, k=129, seed=0)
def test_gpu_and_popcount_bit_exact(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks, v = _packed(rng, m, k), _packed(rng, n, k)
    mod = and_popcount.and_popcount_module(m, n, k, JETSON_ORIN)
    got = _cpu_run(mod, masks, v, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, ref.and_popcount_ref(masks, v))


@pytest.mark.parametrize(
    "tiles", [GemmTiles(ty=2, tx=8, tm=3, tn=2, kc=3), GemmTiles(ty=1, tx=1, tm=1, tn=1, kc=1)]
)
def test_gpu_bgemm_explicit_tiles(tiles: GemmTiles) -> None:
    m, n, k = 23, 37, 650
    rng = np.random.default_rng(11)
    a, w = _packed(rng, m, k), _packed(rng, n, k)
    mod = schedule_popcount_gemm_gpu(bgemm.make_bgemm(m, n, k, out_dtype="int32"), JETSON_ORIN, tiles)
    got = _cpu_run(mod, a, w, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, ref.binary_gemm_ref(a, w, k))


# --- CUDA code generation ------------------------------------------------------------------------


def _cuda_source(mod: tvm.IRModule, target) -> str:
    with cuda_compile_scope(target) as tgt:
        ex = tvm.compile(mod, target=tgt)
    (dev,) = [m for m in ex.mod.imports if m.kind == "cuda"]
    return dev.inspect_source("cuda")


@needs_nvcc
@pytest.mark.parametrize("target", [JETSON_ORIN, X86_SM90], ids=["jetson", "sm90"])
def test_kernels_compile_for_cuda_with_popcll(target) -> None:
    tiles = GemmTiles()
    for mod in (
        bgemm.bgemm_module(200, 64, 300, target),
        and_popcount.and_popcount_module(200, 64, 300, target),
    ):
        src = _cuda_source(mod, target)
        assert "__popcll(" in src
        assert "__shared__" in src and "__syncthreads()" in src
        # The accumulator tile is exactly one thread's tm x tn: had the epilogue been placed over
        # a hull covering other threads' columns, the compacted register array would be larger.
        assert re.search(rf"\bint popc_local\w*\[{tiles.tm * tiles.tn}\];", src), src[:3000]  # 32-bit accumulators
    src = _cuda_source(pack.pack_module(50, 300, target, shift=True), target)
    assert "__global__" in src and re.search(r"uint64_t pack_local\w*\[1\];", src)


# --- whole-model builds --------------------------------------------------------------------------


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2, "not a 64-bit ELF"
    return struct.unpack("<H", head[18:20])[0]


@pytest.fixture(scope="module")
def micro_fused():
    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model
    from tests.conftest import official_path

    path = official_path("micro")
    return fuse_model(export_reference(load_checkpoint(path / "checkpoint.pth").model))


def _check_model_build(fused, target, host_cc, machine: int, tmp_path: Path,
                       kinds: tuple[str, ...] = ("bconv", "scores", "qd_context")) -> None:
    from bhvit_export.targets.importer import import_fused

    mod = import_fused(fused, batch=1, target=target)
    ex = build_cuda(mod, target)
    lib = export_cuda_library(ex, tmp_path / "model.so", host_cc)
    assert _elf_machine(lib) == machine
    # Device code compiled here for the target's arch (a fatbin holding an sm_XX cubin, itself an
    # ELF), not CUDA source left for the device to JIT at load time.
    assert device_code_format(ex) == "binary"
    blob = lib.read_bytes()
    arch = str(tvm.target.Target(target).attrs["arch"]).encode()
    assert blob.count(b"\x7fELF") >= 2 and arch in blob
    assert b"__popcll(" not in blob and b"__global__" not in blob
    cuda_mods = []

    def collect(m) -> None:
        for im in m.imports:
            if im.kind == "cuda":
                cuda_mods.append(im)
            collect(im)

    collect(ex.mod)
    src = "".join(m.inspect_source() for m in cuda_mods)
    assert "__popcll(" in src
    assert re.search(r"bhvit_bgemm_\w+_kernel", src) and re.search(r"bhvit_pack_\w+_kernel", src)
    for kind in kinds:  # the conv and attention ops as packed GPU kernels
        assert re.search(rf"bhvit_{kind}_\w+_kernel", src), kind
    assert not re.search(r"uint64_t popc_local", src)  # 32-bit accumulators everywhere


@needs_nvcc
@needs_cross
def test_micro_compiles_for_jetson_orin_aarch64(fused_onnx, tmp_path: Path) -> None:
    """Through the CLI: ``compile -t jetson-orin`` gives an aarch64 bundle with compiled sm_87 code."""
    import json

    from click.testing import CliRunner

    from bhvit_export.bundle.manifest import check_bundle
    from bhvit_export.cli import cli

    out = tmp_path / "jetson"
    res = CliRunner().invoke(cli, ["compile", str(fused_onnx("micro")), "-t", "jetson-orin", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["target"]["device"] == "cuda" and report["target"]["arch"] == "aarch64"
    m = check_bundle(out)
    assert m.target["device_code"] == "binary" and m.native is None
    lib = out / "model.so"
    assert _elf_machine(lib) == EM_AARCH64
    blob = lib.read_bytes()
    assert b"sm_87" in blob and b"__global__" not in blob


@needs_nvcc
def test_micro_compiles_for_sm90_x86_host(micro_fused, tmp_path: Path) -> None:
    _check_model_build(micro_fused, X86_SM90, None, EM_X86_64, tmp_path)


# --- build(), errors -----------------------------------------------------------------------------


@needs_nvcc
def test_build_dispatches_cuda_targets() -> None:
    from bhvit_export.targets.build import build
    from bhvit_export.targets.importer import import_fused
    from tests.targets.test_import import _single_op_model

    model, _ = _single_op_model("BinaryLinear", np.random.default_rng(zlib.crc32(b"BinaryLinear")))
    ex = build(import_fused(model, batch=1, target=JETSON_ORIN), JETSON_ORIN)
    assert isinstance(ex, relax.VMExecutable)
    assert any(m.kind == "llvm" for m in ex.mod.imports)


def test_unscheduled_function_is_named() -> None:
    from tvm import te

    x = te.placeholder((4,), "float32", name="x")
    y = te.compute((4,), lambda i: x[i] + 1.0, name="y")
    func = te.create_prim_func([x, y])
    mod = tvm.IRModule({"add_one": func, "done": func.with_attr("tirx.is_scheduled", True)})
    assert unscheduled_functions(mod) == ["add_one"]
    with pytest.raises(TargetError, match="no GPU schedule for 1 function.*add_one"):
        require_gpu_schedules(mod)


def test_build_cuda_rejects_cpu_targets() -> None:
    with pytest.raises(TargetError, match="needs a cuda target, got llvm"):
        build_cuda(tvm.IRModule(), {"kind": "llvm"})


# --- the device check script ---------------------------------------------------------------------


def _device_check():
    spec = importlib.util.spec_from_file_location("cuda_device_check", REPO / "benchmarks" / "cuda_device_check.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_device_check_metrics_match_test_helpers() -> None:
    from tests.helpers import compare_end_to_end

    dc = _device_check()
    rng = np.random.default_rng(3)
    ref_logits = rng.standard_normal((6, 10)).astype(np.float32)
    got = ref_logits + rng.standard_normal((6, 10)).astype(np.float32) * 0.05
    mine, theirs = dc.metrics(got, ref_logits), compare_end_to_end(got, ref_logits)
    assert mine["cosine"] == pytest.approx(theirs["cosine"])
    assert mine["max_abs"] == pytest.approx(theirs["max_abs"])
    assert mine["max_abs_over_std"] == pytest.approx(theirs["rel_std"])
    assert mine["top1_agreement"] == theirs["top1_agree"]
    assert dc.within(dc.metrics(ref_logits, ref_logits), dc.TOLERANCES)
    assert not dc.within(mine, dc.TOLERANCES)  # 5% noise: max |diff| is over 5% of std


@pytest.fixture(scope="module")
def cpu_payload(tmp_path_factory):
    """A host-CPU payload shaped like ``benchmarks/cuda_payload.py``'s: the native runner, a
    one-BinaryLinear bundle with golden inputs and onnxruntime's outputs, the same op under
    ``ops/``, and its ONNX as ``reference.onnx`` (no checkpoint: the PyTorch step is skipped)."""
    import shutil as sh

    from bhvit_export.targets.build import build, export_library
    from bhvit_export.targets.importer import import_fused
    from bhvit_export.targets.native_build import build_runner
    from tests.targets.test_import import _ort, _single_op_model

    root = tmp_path_factory.mktemp("payload")
    model, x = _single_op_model("BinaryLinear", np.random.default_rng(zlib.crc32(b"BinaryLinear")))
    build_runner("x86_64", root / "runtime")
    (root / "bundle" / "golden").mkdir(parents=True)
    export_library(build(import_fused(model, batch=1, packed=False), {"kind": "llvm"}), root / "bundle" / "model.so")
    inputs = np.concatenate([x, x * -0.5, x + 0.25])
    reference = np.concatenate([_ort(model, {"x": inputs[i : i + 1]}) for i in range(3)])
    np.save(root / "bundle" / "golden" / "inputs.npy", inputs)
    np.save(root / "bundle" / "golden" / "reference.npy", reference.reshape(3, -1))
    op = root / "ops" / "BinaryLinear"
    op.mkdir(parents=True)
    sh.copy2(root / "bundle" / "model.so", op / "model.so")
    np.save(op / "input.npy", inputs)
    np.save(op / "expected.npy", reference)
    (root / "reference.onnx").write_bytes(model.SerializeToString())
    return root


def test_device_check_dry_run_on_a_cpu_payload(cpu_payload: Path, tmp_path: Path, capsys) -> None:
    """The script's whole flow (kernels, bundle, peers that exist, the verdict, table and JSON) on
    a host-CPU payload through the native runner; then a wrong kernel result fails it."""
    import json
    import shutil as sh

    dc = _device_check()
    saved = tmp_path / "report.json"
    assert dc.main([str(cpu_payload), "--device", "cpu", "--runs", "3", "--warmup", "1", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "BinaryLinear" in out and "tvm bundle (packed)" in out
    report = json.loads(saved.read_text())
    assert report["pass"] and report["kernels"][0]["pass"] and report["kernels"][0]["max_abs"] < 1e-4
    assert report["bundle"]["vs_official_cpu"]["cosine"] > 0.99999 and report["bundle"]["median_ms"] > 0
    assert report["peers"]["pytorch_cpu_eager"]["skipped"] == "no checkpoint.pth in the payload"
    assert report["peers"]["onnxruntime_cpu"]["median_ms"] > 0 and report["verdict_against"] == "official_cpu_logits"
    bad = tmp_path / "bad"
    sh.copytree(cpu_payload, bad, symlinks=True)
    expected = np.load(bad / "ops" / "BinaryLinear" / "expected.npy")
    np.save(bad / "ops" / "BinaryLinear" / "expected.npy", expected + 1.0)
    assert dc.main([str(bad), "--device", "cpu", "--runs", "1", "--warmup", "0", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["pass"] and not report["kernels"][0]["pass"]


def test_device_check_without_a_gpu_is_exit_2(cpu_payload: Path, tmp_path: Path, capsys) -> None:
    """``--device cuda`` where the CUDA plugin or a GPU is missing: one ``error:`` line, exit 2;
    a folder that is no payload: the same."""
    dc = _device_check()
    assert dc.main([str(cpu_payload), "--runs", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RuntimeError: bhvit-run: ") and len(err.strip().splitlines()) == 1
    assert dc.main([str(tmp_path)]) == 2
    assert "bundle/model.so missing" in capsys.readouterr().err


@needs_nvcc
def test_micro_gsb_compiles_for_sm90_x86_host(fused_onnx, tmp_path: Path) -> None:
    """GSBAttentionContext's float Relax lowering (masks as floats, one batched matmul) builds for CUDA."""
    import onnx

    _check_model_build(onnx.load(str(fused_onnx("micro-gsb"))), X86_SM90, None, EM_X86_64, tmp_path,
                       kinds=("bconv", "scores"))  # GSB's context: float Relax on cuda
