"""The packed GPU kernels of BinaryConv2d and attention (``targets/kernels/gpu_*.py``), without a GPU.

Three independent checks, each against the numpy references (``targets/kernels/reference.py``):

* the **numpy emulation of the tiling** (``gpu_emulation``: blocks, threads, shared tiles, int32
  registers; written from the decomposition, not the TIR) is bit-exact on random small shapes, and
  its memory statistics show the sign-pack fetches coalesced and its shared reads conflict-free;
* the **TIR** of each GPU schedule, serialised to CPU loops (``packed.serialize_threads``), is
  bit-exact, and the micro fixture lowered with every packed GPU kernel (serialised, the float
  remainder on the CPU) matches the official logits within the spec's end-to-end tolerance;
* the kernels **compile** with nvcc for sm_87 (Jetson Orin) and sm_90 (H100/H200): micro-sized
  shapes in one module per arch (one nvcc run each), the source holding ``__popcll`` into ``int``
  register accumulators and shared-memory tiles, the cubin built for the arch.

Nothing here runs CUDA code: ``benchmarks/cuda_device_check.py`` does that on a GPU machine.
"""

from __future__ import annotations

import functools
import re
import shutil
import struct

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.targets.build_cuda import JETSON_ORIN, X86_SM90, cuda_compile_scope  # noqa: E402
from bhvit_export.targets.kernels import and_popcount, bgemm, gpu_attention, gpu_bconv, pack  # noqa: E402
from bhvit_export.targets.kernels import gpu_emulation as emu  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.kernels.bconv import ConvGeometry, border_correction  # noqa: E402
from bhvit_export.targets.schedules.gpu.packed import pack_tile, serialize_threads  # noqa: E402

SEED = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=40, deadline=None)  # numpy only
TIR = settings(max_examples=4, deadline=None)  # one LLVM build per example

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (CUDA toolkit)")


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Float data with exact zeros, -0.0 and NaN sprinkled in (all must pack as +1)."""
    x = rng.standard_normal(shape).astype(np.float32)
    hit = rng.random(shape) < 0.05
    x[hit] = rng.choice(np.array([0.0, -0.0, np.nan], np.float32), size=int(hit.sum()))
    return x


def _thresholds(rng: np.random.Generator, h: int) -> np.ndarray:
    """Per-head thresholds, unsorted on purpose (the kernels assume no order)."""
    return rng.uniform(0.0, 1.0, (h, 3)).astype(np.float32)


@st.composite
def conv_geometries(draw: st.DrawFn) -> ConvGeometry:
    group = draw(st.sampled_from([1, 2, 4]))
    cg, og = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    span_h, span_w = dil * (kh - 1) + 1, dil * (kw - 1) + 1
    height = draw(st.integers(max(1, span_h - pads[0] - pads[2]), 9))
    width = draw(st.integers(max(1, span_w - pads[1] - pads[3]), 9))
    return ConvGeometry(
        draw(st.integers(1, 2)), cg * group, height, width, og * group, kernel=(kh, kw),
        strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), pads=pads,  # type: ignore[arg-type]
        dilations=(dil, dil), group=group,
    )


def _conv_data(geom: ConvGeometry, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = _signs(rng, (geom.batch, geom.channels, geom.height, geom.width))
    shift = rng.standard_normal(geom.channels).astype(np.float32)
    return x, shift, ref.pack_bits(rng.standard_normal((geom.out_channels, geom.k)))


def _conv_ref(geom: ConvGeometry, x: np.ndarray, shift: np.ndarray, w: np.ndarray) -> np.ndarray:
    return ref.binary_conv2d_ref(x, shift, w, geom.kernel, geom.strides, geom.pads, geom.dilations, geom.group)


def _attention_data(b: int, n: int, c: int, h: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q": _signs(rng, (b, n, c)), "k": _signs(rng, (b, n, c)), "v": _signs(rng, (b, n, c)),
        "q_shift": rng.standard_normal(c).astype(np.float32), "k_shift": rng.standard_normal(c).astype(np.float32),
        "v_shift": rng.standard_normal(c).astype(np.float32),
        "p": rng.random((b, h, n, n)).astype(np.float32), "thresholds": _thresholds(rng, h),
    }


HEADS = st.tuples(st.integers(1, 3), st.sampled_from([8, 32, 64, 96, 128]))  # (h, d): d < 64, = 64, > 64 ragged


# --- 1. the numpy emulation of the tiling ---------------------------------------------------------


@FAST
@given(m=st.integers(1, 140), k=st.one_of(st.integers(1, 700), st.sampled_from([64, 65, 256, 513])), seed=SEED)
@example(m=130, k=64, seed=0)
def test_emulated_pack_is_bit_exact_coalesced_and_conflict_free(m: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, shift = _signs(rng, (m, k)), rng.standard_normal(k).astype(np.float32)
    stats = emu.PackStats()
    np.testing.assert_array_equal(emu.pack_kernel(x, shift, stats), ref.pack_bits(x + shift))
    # A warp's fetch is 32 consecutive floats of the tile: at most two 128-byte lines when rows
    # are whole lines (the old one-thread-per-word reads touched 32 lines per warp load).
    if k % 32 == 0:
        assert stats.lines_per_warp_load <= 2, stats
    # Warps made of one word column of >= 32 tile rows read 32 distinct banks.
    tw, tr = pack_tile(m, ref.num_words(k), k)
    if tr >= 32:
        assert stats.bank_ways == 1, stats


@FAST
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 900), seed=SEED)
@example(m=37, n=48, k=576, seed=1)  # Kw = 9: one full 8-word chunk and a 1-word tail
def test_emulated_gemms_are_bit_exact(m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, w = ref.pack_bits(rng.standard_normal((m, k))), ref.pack_bits(rng.standard_normal((n, k)))
    np.testing.assert_array_equal(emu.bgemm_kernel(a, w, k), ref.binary_gemm_ref(a, w, k))
    np.testing.assert_array_equal(emu.and_popcount_kernel(a, w), ref.and_popcount_ref(a, w))


@FAST
@given(b=st.integers(1, 2), n=st.integers(1, 80), hd=HEADS, seed=SEED)
@example(b=1, n=65, hd=(2, 64), seed=0)  # N past one word of keys
def test_emulated_attention_is_bit_exact(b: int, n: int, hd: tuple[int, int], seed: int) -> None:
    h, d = hd
    t = _attention_data(b, n, h * d, h, seed)
    np.testing.assert_array_equal(
        emu.scores_kernel(t["q"], t["k"], t["q_shift"], t["k_shift"], h),
        ref.attention_scores_ref(t["q"], t["k"], t["q_shift"], t["k_shift"], h),
    )
    np.testing.assert_array_equal(
        emu.qd_context_kernel(t["p"], t["v"], t["v_shift"], t["thresholds"], h),
        ref.qd_context_ref(t["p"], t["v"], t["v_shift"], t["thresholds"], h),
    )


@FAST
@given(geom=conv_geometries(), seed=SEED)
def test_emulated_bconv_is_bit_exact(geom: ConvGeometry, seed: int) -> None:
    x, shift, w = _conv_data(geom, seed)
    np.testing.assert_array_equal(emu.bconv_kernel(x, shift, w, geom), _conv_ref(geom, x, shift, w))


def test_emulated_bank_statistic_sees_an_unpadded_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the padded row stride (rows of 64 floats = a multiple of 32 banks) the 32 lanes of a
    warp, 32 rows of one column, all hit one bank: the statistic the test above bounds can fail."""
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    padded = emu.PackStats()
    emu.pack_kernel(x, None, padded)
    monkeypatch.setattr(emu, "_row_stride", lambda cols, elem_bytes: cols)
    unpadded = emu.PackStats()
    np.testing.assert_array_equal(emu.pack_kernel(x, None, unpadded), ref.pack_bits(x))
    assert padded.bank_ways == 1 and unpadded.bank_ways == 32


# --- 2. the TIR, serialised to CPU loops -------------------------------------------------------------


def _cpu_run(mod: tvm.IRModule, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    lib = tvm.compile(serialize_threads(mod), target="llvm").mod
    dev = tvm.cpu()
    out_t = tvm.runtime.tensor(out, dev)
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays), out_t)
    return out_t.numpy()


@TIR
@given(geom=conv_geometries(), seed=SEED)
@example(geom=ConvGeometry(2, 32, 9, 9, 64, strides=(2, 2), pads=(1, 0, 1, 2), group=2), seed=3)
def test_gpu_bconv_tir_bit_exact(geom: ConvGeometry, seed: int) -> None:
    x, shift, w = _conv_data(geom, seed)
    pat, corr = border_correction(geom, w)
    mod = gpu_bconv.bconv_module_gpu(geom, JETSON_ORIN, out_dtype="int32")
    out = np.zeros((geom.batch, geom.out_h * geom.out_w, geom.out_channels), np.int32)
    got = _cpu_run(mod, x, shift, w, pat, corr, out=out)
    want = _conv_ref(geom, x, shift, w)
    np.testing.assert_array_equal(got.transpose(0, 2, 1).reshape(want.shape), want)


@settings(max_examples=3, deadline=None)  # two LLVM builds per example
@given(b=st.integers(1, 2), n=st.integers(1, 70), hd=HEADS, seed=SEED)
@example(b=1, n=65, hd=(2, 96), seed=0)
def test_gpu_attention_tir_bit_exact(b: int, n: int, hd: tuple[int, int], seed: int) -> None:
    h, d = hd
    c = h * d
    t = _attention_data(b, n, c, h, seed)
    scores = gpu_attention.scores_module_gpu(b, n, c, h, 1.0, X86_SM90, out_dtype="int32")
    got = _cpu_run(scores, t["q"], t["k"], t["q_shift"], t["k_shift"], out=np.zeros((b * h, n, n), np.int32))
    want = ref.attention_scores_ref(t["q"], t["k"], t["q_shift"], t["k_shift"], h)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    ctx = gpu_attention.qd_context_module_gpu(b, n, c, h, X86_SM90, out_dtype="int32")
    got = _cpu_run(ctx, t["p"], t["v"], t["v_shift"], t["thresholds"], out=np.zeros((b, n, c), np.int32))
    np.testing.assert_array_equal(got, ref.qd_context_ref(t["p"], t["v"], t["v_shift"], t["thresholds"], h))


def test_gpu_float_epilogues() -> None:
    """The float variants: ``* scale + bias`` (conv), ``/ scale`` (scores), ``* alpha`` (context)."""
    rng = np.random.default_rng(5)
    geom = ConvGeometry(1, 16, 6, 7, 16, pads=(1, 1, 1, 1), group=2)
    x, shift, w = _conv_data(geom, 5)
    pat, corr = border_correction(geom, w)
    scale, bias = rng.uniform(0.1, 2, 16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    out = np.zeros((1, geom.out_h * geom.out_w, 16), np.float32)
    got = _cpu_run(gpu_bconv.bconv_module_gpu(geom, JETSON_ORIN), x, shift, w, pat, corr, scale, bias, out=out)
    want = _conv_ref(geom, x, shift, w).astype(np.float64) * scale[None, :, None, None] + bias[None, :, None, None]
    np.testing.assert_allclose(got.transpose(0, 2, 1).reshape(want.shape), want, rtol=1e-6, atol=1e-5)
    b, n, h, d = 1, 20, 2, 32
    t = _attention_data(b, n, h * d, h, 6)
    got = _cpu_run(gpu_attention.scores_module_gpu(b, n, h * d, h, 8.0, JETSON_ORIN),
                   t["q"], t["k"], t["q_shift"], t["k_shift"], out=np.zeros((b * h, n, n), np.float32))
    want = ref.attention_scores_ref(t["q"], t["k"], t["q_shift"], t["k_shift"], h) / np.float32(8.0)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    alpha = np.array([0.5, 0.25], np.float32)
    got = _cpu_run(gpu_attention.qd_context_module_gpu(b, n, h * d, h, JETSON_ORIN),
                   t["p"], t["v"], t["v_shift"], t["thresholds"], alpha, out=np.zeros((b, n, h * d), np.float32))
    want = ref.qd_context_ref(t["p"], t["v"], t["v_shift"], t["thresholds"], h) * np.repeat(alpha, d)[None, None]
    np.testing.assert_array_equal(got, want)


def test_cuda_targets_dispatch_to_the_gpu_kernels() -> None:
    """``attention.*_module``/``bconv.bconv_module`` (what the converters call) pick the GPU
    schedules on cuda targets, with int32 accumulators; llvm keeps the CPU ones."""
    from bhvit_export.targets.kernels import attention, bconv

    geom = ConvGeometry(1, 8, 5, 5, 8, pads=(1, 1, 1, 1), group=2)
    for mod in (attention.scores_module(1, 5, 64, 2, 8.0, JETSON_ORIN), attention.qd_context_module(1, 5, 64, 2, X86_SM90),
                bconv.bconv_module(geom, JETSON_ORIN)):
        script = mod.script()
        assert 'thread="blockIdx.z"' in script and 'scope="shared"' in script
        assert re.search(r'popc_local = T\.sblock_alloc_buffer\(\([^)]*\), "int32"', script), script[:2000]
    cpu = bconv.bconv_module(geom, {"kind": "llvm", "mcpu": "sapphirerapids"}).script()
    assert "thread_binding" not in cpu


def test_micro_with_serialised_gpu_kernels_matches_official_logits() -> None:
    """The converters' cuda wiring end to end: the micro fixture imported for sm_90 (every binary
    op a packed GPU kernel), each kernel serialised to CPU loops, the float remainder built for the
    CPU; the logits of two official inputs agree with the official ones as the spec says."""
    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model
    from bhvit_export.targets.build import build, run
    from bhvit_export.targets.importer import import_fused
    from tests.conftest import official_path
    from tests.helpers import assert_end_to_end

    src = official_path("micro")
    fused = fuse_model(export_reference(load_checkpoint(src / "checkpoint.pth").model))
    mod = import_fused(fused, batch=1, target=X86_SM90)
    kernels = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "thread_binding" in f.script()}
    for kind in ("bhvit_bconv_", "bhvit_scores_", "bhvit_qd_context_", "bhvit_pack_", "bhvit_bgemm_"):
        assert any(name.startswith(kind) for name in kernels), (kind, sorted(kernels))
    for name, func in kernels.items():
        mod[name] = serialize_threads(tvm.IRModule({"main": func}))["main"]
    ex = build(mod, {"kind": "llvm"})
    x = np.load(src / "inputs.npy")[:2]
    got = np.concatenate([run(ex, x[i : i + 1]) for i in range(len(x))])
    assert_end_to_end(got, np.load(src / "logits.npy")[:2])


# --- 3. CUDA builds for two architectures -------------------------------------------------------------


def _micro_kernels(target) -> dict[str, tvm.IRModule]:  # noqa: ANN001
    geom = ConvGeometry(1, 8, 5, 5, 8, pads=(1, 1, 1, 1), group=2)
    return {
        "pack": pack.pack_module(5, 100, target, shift=True),
        "bgemm": bgemm.bgemm_module(7, 9, 100, target),
        "and_popcount": and_popcount.and_popcount_module(7, 9, 100, target),
        "scores": gpu_attention.scores_module_gpu(1, 5, 64, 2, 8.0, target),
        "qd_context": gpu_attention.qd_context_module_gpu(1, 5, 64, 2, target),
        "bconv": gpu_bconv.bconv_module_gpu(geom, target),
    }


@functools.lru_cache(maxsize=None)
def _cuda_build(target_name: str) -> tuple[str, bytes]:
    """(CUDA source, device binary) of all micro kernels in one module: one nvcc run per arch."""
    from tvm.support import nvcc

    target = {"jetson": JETSON_ORIN, "sm90": X86_SM90}[target_name]
    funcs = {name: mod["main"].with_attr("global_symbol", name) for name, mod in _micro_kernels(target).items()}
    binaries: list[bytes] = []
    compile_cuda = nvcc.compile_cuda

    def keep(code, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = compile_cuda(code, *args, **kwargs)
        binaries.append(bytes(out))
        return out

    nvcc.compile_cuda = keep  # the codegen callback looks the function up at call time
    try:
        with cuda_compile_scope(target) as tgt:
            ex = tvm.compile(tvm.IRModule(funcs), target=tgt)
    finally:
        nvcc.compile_cuda = compile_cuda
    (dev,) = [m for m in ex.mod.imports if m.kind == "cuda"]
    assert len(binaries) == 1
    return str(dev.inspect_source("cuda")), binaries[0]


def _cubin_sm(blob: bytes) -> int:
    """The SM version of the first cubin (an ELF) in a fatbin: CUDA's ``e_flags`` holds it in bits
    0-7 (ELF ABI < 8) or 8-15 (ABI 8, CUDA 12.8+)."""
    at = blob.find(b"\x7fELF")
    assert at >= 0, "no cubin in the device binary"
    abi = blob[at + 8]
    flags = struct.unpack_from("<I", blob, at + 48)[0]
    return (flags >> 8) & 0xFF if abi >= 8 else flags & 0xFF


@needs_nvcc
@pytest.mark.parametrize(("target_name", "sm"), [("jetson", 87), ("sm90", 90)])
def test_gpu_kernels_compile_with_popcount_and_int32_accumulators(target_name: str, sm: int) -> None:
    src, blob = _cuda_build(target_name)
    assert _cubin_sm(blob) == sm
    for name in ("pack", "bgemm", "and_popcount", "scores", "qd_context", "bconv"):
        kernels = re.findall(rf"extern \"C\" __global__ void __launch_bounds__\(\d+\) ({name}_kernel\w*)\(", src)
        assert kernels, f"no {name} kernel in the CUDA source"
        assert name.encode() in blob
    bodies = src.split('extern "C" __global__')
    for name in ("bgemm", "and_popcount", "scores", "qd_context", "bconv"):
        body = next(b for b in bodies if re.search(rf"void __launch_bounds__\(\d+\) {name}_kernel\w*\([^;]*\{{", b)
                    and "popc_local" in b)
        assert "__popcll(" in body and "__shared__" in body and "__syncthreads()" in body, name
        assert re.search(r"\bint popc_local\w*\[\d+\];", body), name  # 32-bit register accumulators
        assert "uint64_t popc_local" not in body and "long long popc_local" not in body, name
    # the sign-packs stage their source rows in shared memory (coalesced fetch, padded rows)
    assert re.search(r"__shared__ alignas\(\d+\) float x_shared\w*\[\d+\];", src)
    assert re.search(r"__shared__ alignas\(\d+\) float q_shared\w*\[\d+\];", src)
