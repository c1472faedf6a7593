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
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tvm")

import tvm  # noqa: E402

from bhvit_export.benchmarks.mca import inner_loop  # noqa: E402
from bhvit_export.targets.kernels import and_popcount, bgemm, neon_gemm  # noqa: E402
from bhvit_export.targets.kernels import reference as ref  # noqa: E402
from bhvit_export.targets.kernels.build import assembly  # noqa: E402
from bhvit_export.targets.kernels.target_info import as_target  # noqa: E402

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
    assert np.all(np.abs(got - ref.binary_linear_ref(a, w, k, scale, bias)) <= 1e-5 * magnitude + 1e-30)


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


@pytest.mark.parametrize("variant", ["uadalp", "udot"])
@pytest.mark.parametrize("m, c, ratio", [(5, 64, 8), (3, 128, 4), (2, 64 * 33, 1)])  # 33 words: two uint8 chunks
def test_expand_pack_neon_popcount_under_qemu(device: _Device, variant: str, m: int, c: int, ratio: int) -> None:
    """The NEON popcount of ``BinaryExpandPack`` (uint8 ``cnt`` sums / ``udot``) against numpy."""
    from bhvit_export.targets.kernels import expand_pack

    target = TARGETS[variant]
    n = c * ratio
    lib = device.load({"ep": expand_pack.expand_pack_module(m, n, c, ratio, target)["main"]}, target)
    rng = np.random.default_rng(m * 1000 + c + ratio)
    x = rng.standard_normal((m, c)).astype(np.float32)
    w_pm = np.where(rng.random((n, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    scale, bias, b1, slope, b2, nshift = (rng.standard_normal(n).astype(np.float32) for _ in range(6))
    a = np.where(x < 0, -1.0, 1.0).astype(np.float32)
    h = (a @ w_pm.T) * scale + bias + np.tile(x, (1, ratio)) - b1
    h = np.where(h < 0, h * slope, h) + b2
    dev = device.dev
    args = [tvm.runtime.tensor(np.ascontiguousarray(v), dev)
            for v in (ref.pack_bits(x), x, ref.pack_bits(w_pm).T, scale, bias, b1, slope, b2, nshift)]
    outs = [tvm.runtime.tensor(np.zeros((m, n // 64), np.uint64), dev), tvm.runtime.tensor(np.zeros((m, c), np.float32), dev)]
    lib["ep"](*args, *outs)
    got_bits, got_pooled = (o.numpy() for o in outs)
    near_zero = ref.pack_bits(np.where(np.abs(h + nshift) < 1e-4 * (1 + np.abs(h)), -1.0, 1.0))
    assert not np.any((got_bits ^ ref.pack_bits(h + nshift)) & ~near_zero), "sign bits differ away from zero"
    np.testing.assert_allclose(got_pooled, h.reshape(m, c, ratio).mean(-1), rtol=1e-5, atol=1e-5 * (1 + float(np.abs(h).max())))
    asm = assembly(expand_pack.expand_pack_module(m, n, c, ratio, target), target)
    assert re.search(r"^\s+cnt\s", asm, re.MULTILINE) and not re.search(r"uaddlp\s+v\d+\.2d", asm)
