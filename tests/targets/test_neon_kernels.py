"""The aarch64 NEON popcount GEMMs (``targets/kernels/neon_gemm.py``): machine code and bit-exactness.

The kernels are cross-compiled, linked with the aarch64 g++ and run under qemu through the RPC
emulator (``targets/emulate.py``); without qemu or the cross compiler those tests skip. The
disassembly tests need only LLVM: ``udot`` when the target has dotprod, ``cnt`` + ``uadalp``
otherwise, and in both cases no per-word widening to 64-bit lanes in the K loop.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.benchmarks.mca import inner_loop  # noqa: E402
from bhvit_export.targets.kernels import and_popcount, bgemm, neon_gemm  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.kernels.build import assembly  # noqa: E402
from bhvit_export.targets.kernels.target_info import as_target  # noqa: E402
from tests.targets.test_attention_kernels import _qd_inputs, _shift, _signs  # noqa: E402
from tests.targets.test_bconv import _data, _ref, assert_scaled_conv  # noqa: E402

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
A76 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
TARGETS = {"uadalp": A72, "udot": A76}
_names = itertools.count()


# --- machine code -------------------------------------------------------------------------------


def test_dotprod_detection() -> None:
    assert not neon_gemm.has_dotprod(A72)
    assert neon_gemm.has_dotprod(A76)
    assert neon_gemm.has_dotprod({**A72, "mcpu": "cortex-a55"})  # implied by the CPU


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@pytest.mark.parametrize("kernel", ["bgemm", "and_popcount"])
def test_k_loop_accumulates_narrow(variant: str, kernel: str) -> None:
    target = TARGETS[variant]
    m, n, k = 64, 64, 2048  # 32 K words: LLVM keeps the K loop a loop
    mod = bgemm.bgemm_module(m, n, k, target) if kernel == "bgemm" else and_popcount.and_popcount_module(m, n, k, target)
    loop = inner_loop(assembly(mod, target))
    ops = [ln.split()[0] for ln in loop]
    assert ops.count("cnt") == 16  # 4 rows x 4 vectors (8 columns) per K word
    if variant == "udot":
        assert ops.count("udot") == 16 and "uadalp" not in ops
    else:
        assert ops.count("uadalp") == 16 and "udot" not in ops
    assert not any(re.search(r"uaddlp\s+v\d+\.2d", ln) for ln in loop), "64-bit widening left in the K loop"
    combine = "eor" if kernel == "bgemm" else "and"
    assert ops.count(combine) == 16


@pytest.mark.parametrize("cpu, rows", [("cortex-a72", 2), ("cortex-a76", 2), ("cortex-a55", 8)])
def test_register_tile_comes_from_the_architecture_record(cpu: str, rows: int) -> None:
    from bhvit_export.targets.arch import arch_of

    target = {**A72, "mcpu": cpu}
    assert arch_of(target).popcount_tile[0] == rows and arch_of(target).name == "neon"
    loop = inner_loop(assembly(bgemm.bgemm_module(64, 64, 2048, target), target))
    ops = [ln.split()[0] for ln in loop]
    # Per K word: one broadcast row word per tile row, against 16 / rows weight vectors (LLVM may
    # unroll the K loop, so compare ratios).
    assert ops.count("cnt") == ops.count("ld1r") * (16 // rows) and ops.count("cnt") % 16 == 0


def test_small_n_falls_back_to_the_generic_schedule() -> None:
    assert not neon_gemm.supports(3)
    asm = assembly(bgemm.bgemm_module(8, 3, 100, A72, out_dtype="int32"), A72)
    assert re.search(r"^\s+cnt\s", asm, re.MULTILINE)


def test_tile_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        neon_gemm.neon_popcount_gemm(8, 16, 64, combine="xor", out_dtype="int32",
                                     epilogue=lambda p, c, e: p, tile=neon_gemm.NeonTile(4, 6))
    assert neon_gemm.NeonTile(4, 8).fit(2, 13) == neon_gemm.NeonTile(2, 8)
    assert neon_gemm.NeonTile(4, 8).fit(9, 6) == neon_gemm.NeonTile(4, 4)


# --- bit-exactness under qemu -------------------------------------------------------------------


class _Device:
    """An emulated aarch64 RPC device that loads one cross-built library per call."""

    def __init__(self, host: str, port: int, tmp: Path) -> None:
        from tvm import rpc

        self.remote = rpc.connect(host, port)
        self.dev = self.remote.cpu()
        self.tmp = tmp

    def load(self, funcs: dict[str, tvm.tirx.PrimFunc], target: dict) -> tvm.runtime.Module:
        from bhvit_export.targets.native_build import export_library

        mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
        path = self.tmp / f"neon_{next(_names)}.so"
        export_library(tvm.compile(mod, target=as_target(target)), path, "aarch64")
        self.remote.upload(str(path))
        return self.remote.load_module(path.name)

    def run(self, fn, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:  # noqa: ANN001
        out_t = tvm.runtime.tensor(out, self.dev)
        fn(*(tvm.runtime.tensor(np.ascontiguousarray(a), self.dev) for a in arrays), out_t)
        return out_t.numpy()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Device]:
    from tests.targets.test_native import aarch64_libs, need

    need("aarch64-g++", "qemu-aarch64")
    aarch64_libs()
    from bhvit_export.targets.emulate import emulator

    with emulator("aarch64") as (host, port):
        yield _Device(host, port, tmp_path_factory.mktemp("neon"))


def _check_all(device: _Device, target: dict, m: int, n: int, k: int, seed: int) -> None:
    lib = device.load(
        {
            "bi": bgemm.bgemm_module(m, n, k, target, out_dtype="int32")["main"],
            "bf": bgemm.bgemm_module(m, n, k, target)["main"],
            "an": and_popcount.and_popcount_module(m, n, k, target)["main"],
            **({"fo": bgemm.bgemm_folded_module(m, n, k, target)["main"]} if neon_gemm.supports(n) else {}),
        },
        target,
    )
    rng = np.random.default_rng(seed)
    a, w = ref.pack_bits(rng.standard_normal((m, k))), ref.pack_bits(rng.standard_normal((n, k)))
    got = device.run(lib["bi"], a, w, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, ref.binary_gemm_ref(a, w, k))
    got = device.run(lib["an"], a, w, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, ref.and_popcount_ref(a, w))
    scale = rng.uniform(0.01, 2.0, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = device.run(lib["bf"], a, w, scale, bias, out=np.zeros((m, n), np.float32))
    magnitude = np.abs(ref.binary_gemm_ref(a, w, k) * scale[None, :]) + np.abs(bias)[None, :]
    want = ref.binary_linear_ref(a, w, k, scale, bias)
    assert np.all(np.abs(got - want) <= 1e-5 * magnitude + 1e-30)
    if neon_gemm.supports(n):
        # the folded affine (bgemm_folded): popc * (-2 scale) + (K scale + bias), transposed weights;
        # its rounding is relative to K |scale| + |bias| (the folded constant's size)
        ns2, kb = bgemm.fold_affine(scale, bias, k)
        got = device.run(lib["fo"], a, np.ascontiguousarray(w.T), ns2, kb, out=np.zeros((m, n), np.float32))
        folded_size = k * np.abs(scale)[None, :] + np.abs(bias)[None, :]
        assert np.all(np.abs(got - want) <= 2e-7 * folded_size + 1e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@settings(max_examples=6, deadline=None)
@given(
    m=st.integers(1, 20),
    n=st.integers(1, 40),
    k=st.one_of(st.integers(1, 300), st.sampled_from([64, 65, 128, 2048])),
    seed=st.integers(0, 2**32 - 1),
)
def test_neon_kernels_bit_exact_under_qemu(device: _Device, variant: str, m: int, n: int, k: int, seed: int) -> None:
    _check_all(device, TARGETS[variant], m, n, k, seed)


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
def test_tiny_shapes_bit_exact_under_qemu(device: _Device, variant: str) -> None:
    """Overlapping edge tiles on both axes (M % mr, N % nr != 0) and a multi-word K."""
    _check_all(device, TARGETS[variant], 49, 100, 1000, seed=5)


def test_uadalp_chunks_do_not_overflow_under_qemu(device: _Device) -> None:
    """K past 4095 words (16-bit lanes would wrap) with every bit differing: popc == K everywhere."""
    m, n, k = 2, 4, 64 * (neon_gemm.U16_CHUNK_WORDS + 5)
    lib = device.load({"bi": bgemm.bgemm_module(m, n, k, A72, out_dtype="int32")["main"]}, A72)
    a = ref.pack_bits(-np.ones((m, k), np.float32))
    w = ref.pack_bits(np.ones((n, k), np.float32))
    got = device.run(lib["bi"], a, w, out=np.zeros((m, n), np.int32))
    np.testing.assert_array_equal(got, np.full((m, n), -k, np.int32))


def _check_expand_pack(device: _Device, target: dict, m: int, c: int, ratio: int, seed: int, *, folded: bool = True,
                       slope_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """``BinaryExpandPack`` on aarch64 against numpy's unfolded op: packed sign bits and channel means.

    ``folded``: the NEON kernel with folded constants (``expand_pack_neon``), else the 64-lane kernel
    with the NEON popcount (the fallback for non-constant vectors). The sign bits may differ only
    where ``h + next_shift`` is within float rounding of zero (the folded sums are reassociated)."""
    from bhvit_export.targets.kernels import expand_pack, expand_pack_neon

    n = c * ratio
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, c)).astype(np.float32)
    w_pm = np.where(rng.random((n, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    scale, bias, b1, b2, nshift = (rng.standard_normal(n).astype(np.float32) for _ in range(5))
    slope = rng.uniform(*slope_range, n).astype(np.float32)
    a = np.where(x < 0, -1.0, 1.0).astype(np.float32)
    h = (a @ w_pm.T) * scale + bias + np.tile(x, (1, ratio)) - b1
    h = np.where(h < 0, h * slope, h) + b2
    if folded:
        unit = expand_pack_neon.unit_slopes(slope)
        assert unit == (slope_range[0] >= 0 and slope_range[1] <= 1)
        lib = device.load({"ep": expand_pack_neon.folded_module(m, n, c, ratio, unit)["main"]}, target)
        consts = expand_pack_neon.fold_params(scale, bias, b1, slope, b2, nshift, c, ratio)
    else:
        lib = device.load({"ep": expand_pack.expand_pack_module(m, n, c, ratio, target)["main"]}, target)
        consts = (scale, bias, b1, slope, b2, nshift)
    dev = device.dev
    args = [tvm.runtime.tensor(np.ascontiguousarray(v), dev) for v in (ref.pack_bits(x), x, ref.pack_bits(w_pm).T, *consts)]
    outs = [tvm.runtime.tensor(np.zeros((m, n // 64), np.uint64), dev), tvm.runtime.tensor(np.zeros((m, c), np.float32), dev)]
    lib["ep"](*args, *outs)
    got_bits, got_pooled = (o.numpy() for o in outs)
    near_zero = ref.pack_bits(np.where(np.abs(h + nshift) < 1e-4 * (1 + np.abs(h)), -1.0, 1.0))
    want_bits = ref.pack_bits(h + nshift)
    assert not np.any((got_bits ^ want_bits) & ~near_zero), "sign bits differ away from zero"
    assert np.mean(got_bits == want_bits) > 0.5  # not vacuous: most words are whole matches
    np.testing.assert_allclose(got_pooled, h.reshape(m, c, ratio).mean(-1), rtol=1e-5, atol=1e-5 * (1 + float(np.abs(h).max())))


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@pytest.mark.parametrize("m, c, ratio", [(5, 64, 8), (3, 128, 4), (2, 64 * 17, 1), (3, 32, 2), (2, 96, 2)])
def test_expand_pack_neon_under_qemu(device: _Device, variant: str, m: int, c: int, ratio: int) -> None:
    """Tiny's ratios (4, 8), 17 K words (two uint8 chunks of the popcount), ratio 2 and 1, C = 96
    (the residual wraps inside a 32-channel body)."""
    _check_expand_pack(device, TARGETS[variant], m, c, ratio, seed=m * 1000 + c + ratio)


@pytest.mark.parametrize("slope_range", [(-0.5, 0.5), (0.5, 2.0)])
def test_expand_pack_neon_any_slopes_under_qemu(device: _Device, slope_range: tuple[float, float]) -> None:
    """Slopes outside [0, 1] take the compare-and-select RPReLU instead of ``fmax``."""
    _check_expand_pack(device, A72, 4, 64, 8, seed=7, slope_range=slope_range)


@pytest.mark.parametrize("m, c, ratio", [(3, 64, 8), (2, 64, 16), (2, 96, 2)])
def test_expand_pack_64_lane_neon_under_qemu(device: _Device, m: int, c: int, ratio: int) -> None:
    """The fallback (non-constant vectors, ratio 16): the 64-lane kernel with the NEON popcount."""
    _check_expand_pack(device, A72, m, c, ratio, seed=m + c + ratio, folded=False)


@settings(max_examples=6, deadline=None)
@given(m=st.integers(1, 9), ratio=st.sampled_from([1, 2, 4, 8]), words=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_expand_pack_neon_random_shapes_under_qemu(device: _Device, m: int, ratio: int, words: int, seed: int) -> None:
    """Random small shapes: C a multiple of 64 / ratio (so N = ratio * C is whole 64-channel blocks)."""
    c = words * (64 // ratio)
    _check_expand_pack(device, A72, m, c, ratio, seed)


def test_fold_params_match_the_unfolded_epilogue() -> None:
    """The folded constants give the unfolded epilogue's values (numpy, float64 reference)."""
    from bhvit_export.targets.kernels.expand_pack_neon import PARAMS, fold_params

    rng = np.random.default_rng(3)
    n, k, ratio = 64, 16, 4
    scale, bias, b1, slope, b2, nshift = (rng.standard_normal(n) for _ in range(6))
    params, mb2 = fold_params(scale, bias, b1, slope, b2, nshift, k, ratio)
    assert params.shape == (n // 4, len(PARAMS), 4) and params.dtype == np.float32 and mb2.shape == (n // ratio,)
    col = {nm: params[:, i, :].reshape(-1).astype(np.float64) for i, nm in enumerate(PARAMS)}
    p = rng.integers(0, k + 1, n).astype(np.float64)
    res = rng.standard_normal(n)
    pre = (k - 2 * p) * scale + bias + res - b1
    np.testing.assert_allclose(p * col["ns2"] + col["c0"] + res, pre, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(-col["thr"], b2 + nshift, rtol=1e-6)
    np.testing.assert_allclose(mb2, b2.reshape(-1, ratio).mean(1), rtol=1e-6)


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
def test_expand_pack_neon_machine_code(variant: str) -> None:
    """Narrow popcount (no 64-bit widening), the faddp tree for the means, no 64-lane bitcast
    reduction, fmax for unit slopes, and no stack spills in the 32-channel body."""
    from bhvit_export.targets.kernels import expand_pack_neon

    target = TARGETS[variant]
    asm = assembly(expand_pack_neon.folded_module(196, 1024, 256, 4, True), target)
    assert re.search(r"^\s+cnt\s", asm, re.MULTILINE) and not re.search(r"uaddlp\s+v\d+\.2d", asm)
    assert re.search(r"^\s+faddp\s", asm, re.MULTILINE) and not re.search(r"^\s+addv\s", asm, re.MULTILINE)
    body = inner_loop(assembly(expand_pack_neon.folded_module(3136, 512, 64, 8, True), target), with_store=True)
    ops = [ln.split()[0] for ln in body]
    assert ops.count("fmax") == 8 and ops.count("sli") == 7 and ops.count("cnt") == 16
    assert not any("[sp" in ln for ln in body), "stack traffic in the body"


# --- sign-pack (targets/kernels/pack_neon.py) ----------------------------------------------------


def _check_pack(device: _Device, m: int, k: int, shift: bool, seed: int) -> None:
    from bhvit_export.targets.kernels import pack

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[rng.random((m, k)) < 0.05] = 0.0  # zeros pack to +1 (bit 0), like -0 after a shift
    sh = rng.standard_normal(k).astype(np.float32)
    lib = device.load({"pk": pack.pack_module(m, k, A72, shift=shift)["main"]}, A72)
    args = (x, sh) if shift else (x,)
    got = device.run(lib["pk"], *args, out=np.zeros((m, -(-k // 64)), np.uint64))
    want = ref.pack_bits(np.where((x + sh if shift else x) < 0, -1.0, 1.0))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m, k, shift", [(212, 256, True), (3, 64, False), (2, 130, True), (1, 32, True), (4, 96, False)])
def test_pack_neon_bit_exact_under_qemu(device: _Device, m: int, k: int, shift: bool) -> None:
    """Tiny's attention input shape, one word, a partial last word (130, 32, 96: the scalar tail)."""
    _check_pack(device, m, k, shift, seed=m * 100 + k)


@settings(max_examples=5, deadline=None)
@given(m=st.integers(1, 7), k=st.integers(1, 300), shift=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pack_neon_random_shapes_under_qemu(device: _Device, m: int, k: int, shift: bool, seed: int) -> None:
    _check_pack(device, m, k, shift, seed)


def test_pack_neon_machine_code() -> None:
    """Per 32 columns and row: 8 fcmgt against the negated shift (loaded once for 4 rows) merged by
    7 sli, one uint32 store; no fadd, no 64-lane narrowing (uzp1), no spills."""
    from bhvit_export.targets.kernels import pack

    asm = assembly(pack.pack_module(212, 256, A72, shift=True), A72)
    body = inner_loop(asm.replace("\tsli\t", "\tcnt\t"), with_store=True)  # the smallest loop with an sli
    ops = [ln.split()[0] for ln in body]
    assert ops.count("cnt") == 4 * 7 and ops.count("fcmgt") == 4 * 8 and ops.count("fneg") == 8
    assert "uzp1" not in asm and "fadd" not in ops
    assert not any("[sp" in ln for ln in body), "stack traffic in the loop"


# --- channels-last binary conv (targets/kernels/bconv_nhwc_neon.py) -----------------------------


@st.composite
def nhwc_geometries(draw: st.DrawFn):  # noqa: ANN201
    """Small convs the NEON kernel takes: C/g dividing 64, O/g a multiple of 4 (1-3 column tiles);
    C/g = 2 keeps the generic sign-pack, the others take the NEON one."""
    from bhvit_export.targets.kernels.bconv import ConvGeometry

    group, cg = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4, 8, 16, 32, 64]))
    try:
        return ConvGeometry(
            batch=draw(st.integers(1, 2)), channels=group * cg, height=draw(st.integers(1, 8)),
            width=draw(st.integers(1, 8)), out_channels=group * 4 * draw(st.integers(1, 5)),
            kernel=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
            strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
            pads=tuple(draw(st.integers(0, 2)) for _ in range(4)),
            dilations=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), group=group,
        )
    except ValueError:
        assume(False)  # empty output
        raise


def _check_bconv_nhwc(device: _Device, target: dict, geom, seed: int) -> None:  # noqa: ANN001
    from bhvit_export.targets.kernels import bconv, bconv_nhwc, bconv_nhwc_neon
    lib = device.load({
        "pack": bconv_nhwc.sign_pack_module(geom, target)["main"],  # NEON (pack_neon) where C/g is 4k <= 32 or 64
        "ci": bconv_nhwc.bconv_module(geom, target, out_dtype="int32")["main"],
        "cf": bconv_nhwc.bconv_module(geom, target)["main"],
        **({"fo": bconv_nhwc.bconv_folded_module(geom, None, target)["main"]} if bconv_nhwc_neon.supports_folded(geom) else {}),
    }, target)
    x, shift, w_bits = _data(geom, seed)
    ph, pw = geom.padded_hw
    pk = np.zeros((geom.batch, geom.group, ph, pw), np.uint64)
    dev = device.dev
    pk_t = tvm.runtime.tensor(pk, dev)
    lib["pack"](tvm.runtime.tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), dev), tvm.runtime.tensor(shift, dev), pk_t)
    pk = pk_t.numpy()
    pat, corr = bconv.border_correction(geom, w_bits)
    words = bconv_nhwc.tap_major_words(geom, w_bits)
    shape = (geom.batch, geom.out_h * geom.out_w, geom.out_channels)

    def nchw(y: np.ndarray) -> np.ndarray:
        return y.reshape(geom.batch, geom.out_h, geom.out_w, geom.out_channels).transpose(0, 3, 1, 2)

    want = _ref(geom, x, shift, w_bits)
    np.testing.assert_array_equal(nchw(device.run(lib["ci"], pk, words, pat, corr, out=np.zeros(shape, np.int32))), want)
    rng = np.random.default_rng(seed + 1)
    scale = rng.uniform(0.01, 2.0, geom.out_channels).astype(np.float32)
    bias = rng.standard_normal(geom.out_channels).astype(np.float32)
    got = nchw(device.run(lib["cf"], pk, words, pat, corr, scale, bias, out=np.zeros(shape, np.float32)))
    assert_scaled_conv(got, want, scale, bias)
    if bconv_nhwc_neon.supports_folded(geom):
        # affine + border correction folded into one float table: rounded relative to K |scale| + |bias|
        corr_f, ns2 = bconv_nhwc_neon.fold_affine(corr, scale, bias, geom.k)
        got = nchw(device.run(lib["fo"], pk, np.ascontiguousarray(words.T), pat, corr_f, ns2, out=np.zeros(shape, np.float32)))
        s4, b4 = scale[None, :, None, None].astype(np.float64), bias[None, :, None, None].astype(np.float64)
        err = np.abs(got - (want.astype(np.float64) * s4 + b4))
        assert np.all(err <= 3e-7 * (geom.k * np.abs(s4) + np.abs(b4)) + 1e-30)


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@settings(max_examples=5, deadline=None)
@given(geom=nhwc_geometries(), seed=st.integers(0, 2**32 - 1))
def test_bconv_nhwc_neon_bit_exact_under_qemu(device: _Device, variant: str, geom, seed: int) -> None:  # noqa: ANN001
    """Borders (the correction table), strides, dilations, groups, batches; int32 exact, float scaled."""
    _check_bconv_nhwc(device, TARGETS[variant], geom, seed)


def test_bconv_nhwc_tiny_shape_under_qemu(device: _Device) -> None:
    """A BHViT-Tiny stage-2 conv shape (32 channels per group, K = 288: 5 words), A72 tiles."""
    from bhvit_export.targets.kernels.bconv import ConvGeometry

    _check_bconv_nhwc(device, A72, ConvGeometry(1, 128, 9, 9, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4), seed=7)


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
def test_bconv_nhwc_neon_machine_code(variant: str) -> None:
    """The conv's K loop accumulates narrow (no per-word widening to 64-bit lanes)."""
    from bhvit_export.targets.kernels import bconv_nhwc
    from bhvit_export.targets.kernels.bconv import ConvGeometry

    target = TARGETS[variant]
    geom = ConvGeometry(1, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4)
    loop = inner_loop(assembly(bconv_nhwc.bconv_module(geom, target), target))
    ops = [ln.split()[0] for ln in loop]
    assert ops.count("cnt") >= 8 and ops.count("udot" if variant == "udot" else "uadalp") == ops.count("cnt")
    assert not any(re.search(r"uaddlp\s+v\d+\.2d", ln) for ln in loop), "64-bit widening left in the K loop"


# --- attention scores (targets/kernels/attention_neon.py) ---------------------------------------


def _check_scores(device: _Device, target: dict, b: int, n: int, h: int, d: int, scale: float, seed: int) -> None:
    from bhvit_export.targets.kernels import attention

    c = h * d
    lib = device.load({
        "si": attention.scores_module(b, n, c, h, scale, target, out_dtype="int32")["main"],
        "sf": attention.scores_module(b, n, c, h, scale, target)["main"],
    }, target)
    rng = np.random.default_rng(seed)
    q, k, qs, ks = _signs(rng, (b, n, c)), _signs(rng, (b, n, c)), _shift(rng, c), _shift(rng, c)
    want = ref.attention_scores_ref(q, k, qs, ks, h)
    got = device.run(lib["si"], q, k, qs, ks, out=np.zeros((b * h, n, n), np.int32))
    np.testing.assert_array_equal(got.reshape(b, h, n, n), want)
    got = device.run(lib["sf"], q, k, qs, ks, out=np.zeros((b * h, n, n), np.float32)).reshape(b, h, n, n)
    # float32 division of small integers is correctly rounded: the kernel must match it bit for bit.
    np.testing.assert_array_equal(got, want.astype(np.float32) / np.float32(scale))


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@settings(max_examples=5, deadline=None)
@given(b=st.integers(1, 2), n=st.integers(4, 40), h=st.integers(1, 3), d=st.sampled_from([4, 12, 64, 100]),
       scale=st.sampled_from([1.0, 8.0, 3.0, 0.5]), seed=st.integers(0, 2**32 - 1))
def test_scores_neon_bit_exact_under_qemu(device: _Device, variant: str, b: int, n: int, h: int, d: int, scale: float,
                                          seed: int) -> None:
    """Partial words (d = 4, 12, 100), multi-word heads, ragged key tiles, power-of-two and other scales."""
    _check_scores(device, TARGETS[variant], b, n, h, d, scale, seed)


def test_scores_tiny_shape_under_qemu(device: _Device) -> None:
    """BHViT-Tiny's windowed scores: 4 windows x 53 tokens, 4 heads of 64, scale sqrt(64)."""
    _check_scores(device, A72, 4, 53, 4, 64, 8.0, seed=11)


def test_scores_neon_machine_code() -> None:
    from bhvit_export.targets.kernels import attention

    asm = assembly(attention.scores_module(1, 50, 512, 8, 8.0, A72), A72)
    loop = [ln.split()[0] for ln in inner_loop(asm)]
    assert loop.count("cnt") == 16 and loop.count("uaddlp") + loop.count("uadalp") >= 16
    assert not re.search(r"uaddlp\s+v\d+\.2d", asm), "64-bit widening left in the scores"


# --- QD attention context (targets/kernels/attention_neon.py) -----------------------------------


def _check_qd_context(device: _Device, target: dict, b: int, n: int, h: int, d: int, ordered: bool, seed: int) -> None:
    from bhvit_export.targets.kernels import attention

    c = h * d
    lib = device.load({
        "ci": attention.qd_context_module(b, n, c, h, target, out_dtype="int32")["main"],
        "cf": attention.qd_context_module(b, n, c, h, target)["main"],
    }, target)
    p, v, vs, t, alpha = _qd_inputs(np.random.default_rng(seed), b, n, h, d, ordered)
    want = ref.qd_context_ref(p, v, vs, t, h)
    np.testing.assert_array_equal(device.run(lib["ci"], p, v, vs, t, out=np.zeros((b, n, c), np.int32)), want)
    got = device.run(lib["cf"], p, v, vs, t, alpha, out=np.zeros((b, n, c), np.float32))
    # int32 -> float32 is exact here (|sum| <= 3N), then one rounded multiply: bit for bit.
    np.testing.assert_array_equal(got, want.astype(np.float32) * np.repeat(alpha, d)[None, None, :])


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@settings(max_examples=5, deadline=None)
@given(b=st.integers(1, 2), n=st.one_of(st.integers(1, 70), st.sampled_from([64, 128, 130])), h=st.integers(1, 3),
       d=st.sampled_from([4, 8, 20, 64]), ordered=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_qd_context_neon_bit_exact_under_qemu(device: _Device, variant: str, b: int, n: int, h: int, d: int,
                                              ordered: bool, seed: int) -> None:
    """Ragged key words (N % 64), partial quads (N % 4), probabilities on the thresholds, unordered thresholds."""
    _check_qd_context(device, TARGETS[variant], b, n, h, d, ordered, seed)


def test_qd_context_tiny_shape_under_qemu(device: _Device) -> None:
    """BHViT-Tiny's windowed context: 4 windows x 53 tokens, 4 heads of 64."""
    _check_qd_context(device, A72, 4, 53, 4, 64, True, seed=13)


def test_binary_kernel_loop_table_runs() -> None:
    """``benchmarks.mca_binary_kernels`` finds the tile loop of a kernel and prices it below the limit."""
    from bhvit_export.benchmarks.mca import mca_tools
    from bhvit_export.benchmarks.mca_binary_kernels import analyse, format_table

    try:
        mca_tools()
    except Exception:
        pytest.skip("llvm-mca not installed (scripts/install-system-deps.sh)")
    res = analyse(["cortex-a72"], kernels=["scores"])
    assert [r["kernel"] for r in res["rows"]] == ["scores", "scores"]
    assert all(0 < r["fraction_of_limit"] <= 1.05 for r in res["rows"])
    assert "scores" in format_table(res)
