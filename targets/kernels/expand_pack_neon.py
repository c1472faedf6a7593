"""``BinaryExpandPack`` for aarch64 NEON: per 128-bit register, with the per-channel constants folded.

The op (``passes/ops.py``, :mod:`expand_pack`) computes per token row ``i`` and output channel ``j``::

    d  = (K - 2 p) * scale + bias            p = popc(a[i] ^ w[j])
    h  = prelu(d + x[i, j mod C] - b1, slope) + b2
    bit[i, j] = h + next_shift < 0           pooled[i, c] = mean(h[c * ratio : (c + 1) * ratio])

Its six per-channel vectors are constants (initializers), so the converter folds them once, at
import, into four (:func:`fold_params`)::

    pre  = p * ns2 + c0 + x[i, j mod C]           ns2 = -2 scale (exact), c0 = K scale + bias - b1
    u    = prelu(pre, slope)
    bit  = thr > u                                thr = -(b2 + next_shift)
    mean = sum(u over the group) / ratio + mb2    mb2 = the group's mean of b2

which takes per 4 output channels (one ``float32x4``) ``ucvtf`` (exact: p <= K), ``fmla``, ``fadd``,
the RPReLU (``fmul`` + ``fmax`` where every slope is in [0, 1], which is the PReLU exactly; else
``fcmlt``, ``fmul``, ``bsl``) and one ``fcmgt`` for the sign, instead of ``shl``, ``sub``, ``scvtf``,
``fmla``, ``fadd``, ``fsub``, the RPReLU, ``fadd`` (b2), ``fadd`` (next shift) and ``fcmlt``; the
four constants of 4 channels sit side by side in one 64-byte row (two ``ldp`` off one pointer with
immediate offsets, not six register-offset loads). The folding reassociates float sums (``c0``
holds ``K scale``, so its rounding is relative to ``K |scale|``): the sign bits can differ from the
unfolded op only where ``h + next_shift`` is within float rounding of zero, the means by a few
ulps (``tests/targets/test_neon_kernels.py`` checks both against numpy's unfolded op).

Why NEON-specific code at all: the generic kernel writes each 64-channel block as one 64-lane vector,
which LLVM splits into 16 registers and lowers the 64-lane shuffles of the sign mask and the channel
means lane by lane. Here:

* popcount: ``eor`` + ``cnt`` per 2 columns and K word, the byte counts added across K words in
  uint8 (``add .16b``), ``addp .16b`` of the two vectors of 4 columns, ``uaddlp`` twice -> the 4
  column sums as uint32x4 (``udot`` is not used: with K = 1..8 words the byte adds are fewer
  instructions than ``udot`` into a zeroed accumulator per column pair);
* the work runs 32 channels (8 vectors) at a time, the sign word's half and the channel-mean tree
  built as the vectors come, so that few values are live (the unfolded kernel kept all 16 vectors'
  ``h`` and ``h + next_shift`` live and spilled 20 of them to the stack on Cortex-A72);
* sign bits: ``fcmgt`` per 4 channels, the 8 masks of a body merged by ``sli`` into a half word
  (:func:`neon_sign.sign_half`), stored as its uint32;
* channel means: a ``faddp`` tree (level ``L`` adds neighbours ``2^(L-1)`` apart in channel order),
  then one ``fmla`` by ``1 / ratio`` (a power of two) onto ``mb2``.

Supports ratios 1, 2, 4, 8 (:func:`supports`); others keep the generic kernel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .neon_sign import HALF, HALF_BITS, VEC, sign_half
from .reference import WORD_BITS, num_words

LANES = WORD_BITS  # output channels per block: one output word
#: The folded constants per 4 channels, in this order (:func:`fold_params`).
PARAMS = ("ns2", "c0", "slope", "thr")
#: K words whose byte counts fit uint8 after one pairwise add: each word adds <= 8 per byte lane,
#: and the ``addp .16b`` before widening doubles it: 16 * words <= 255.
U8_CHUNK_WORDS = 255 // 16


def supports(m: int, n: int, k: int, ratio: int, unit_slopes: bool = False) -> bool:
    """Power-of-two ratios up to 8 (the ``faddp`` tree inside 32 channels) and whole 64-channel blocks."""
    return ratio in (1, 2, 4, 8) and n == ratio * k and n % LANES == 0 and min(m, n, k) >= 1


def fold_params(
    scale: npt.ArrayLike, bias: npt.ArrayLike, b1: npt.ArrayLike, slope: npt.ArrayLike, b2: npt.ArrayLike,
    next_shift: npt.ArrayLike, k: int, ratio: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The kernel's constants from the op's six per-channel vectors (each ``[N]``) and its ``K``.

    Returns ``params`` ``[N/4, 4, 4]`` float32 (per 4 channels: ``ns2``, ``c0``, ``slope``, ``thr``
    of the 4 channels, one 64-byte row) and ``mb2`` ``[N/ratio]`` float32. Sums are taken in float64
    and rounded once.
    """
    vecs = [np.asarray(v, np.float64).reshape(-1) for v in (scale, bias, b1, slope, b2, next_shift)]
    n = vecs[0].size
    if any(v.size != n for v in vecs) or n % VEC or n % ratio:
        raise ValueError(f"expand-pack constants need {n} values each, N a multiple of 4 and of the ratio {ratio}")
    scale, bias, b1, slope, b2, nshift = vecs
    rows = np.stack([-2.0 * scale, k * scale + bias - b1, slope, -(b2 + nshift)]).astype(np.float32)  # [4, N]
    params = np.ascontiguousarray(rows.reshape(len(PARAMS), n // VEC, VEC).transpose(1, 0, 2))
    mb2 = b2.reshape(n // ratio, ratio).mean(axis=1).astype(np.float32)
    return params, mb2


def unit_slopes(slope: npt.ArrayLike) -> bool:
    """All RPReLU slopes in ``[0, 1]``: the kernel's ``max(pre, slope * pre)`` form applies."""
    s = np.asarray(slope, np.float32)
    return bool(np.all((s >= 0) & (s <= 1)))


def _intrin(dtype: str, name: str, *args: tirx.Expr) -> tirx.Expr:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


def _popc_quad(a: tirx.Buffer, w_t: tirx.Buffer, i: tirx.Expr, col: tirx.Expr, kw: int) -> tirx.Expr:
    """``popc(a[i] ^ w_t[:, col : col + 4])`` summed over K words, as uint32x4."""
    total = None
    for c0 in range(0, kw, U8_CHUNK_WORDS):
        halves = []
        for h in range(2):
            acc = None
            for r in range(c0, min(kw, c0 + U8_CHUNK_WORDS)):
                x = tirx.Broadcast(a[i, r], 2) ^ tirx.BufferLoad(w_t, [r, tirx.Ramp(col + 2 * h, 1, 2)])
                cnt = _intrin("uint8x16", "llvm.ctpop.v16i8", tirx.reinterpret("uint8x16", x))
                acc = cnt if acc is None else acc + cnt
            halves.append(acc)
        pairs = _intrin("uint8x16", "llvm.aarch64.neon.addp.v16i8", *halves)  # 4 bytes per column
        s16 = _intrin("uint16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", pairs)
        s32 = _intrin("uint32x4", "llvm.aarch64.neon.uaddlp.v4i32.v8i16", s16)
        total = s32 if total is None else total + s32
    return total


def _faddp(x: tirx.Expr, y: tirx.Expr) -> tirx.Expr:
    return _intrin("float32x4", "llvm.aarch64.neon.faddp.v4f32", x, y)


def _group_sums(u: list[tirx.Expr], ratio: int) -> list[tirx.Expr]:
    """Sums of ``ratio`` consecutive channels of the vectors ``u`` (4 channels each), ``len(u) * 4 / ratio``
    values as float32x4 vectors: ``faddp`` levels until groups of ``ratio``, then (for ratio 16) none left."""
    level, step = list(u), 1
    while step < ratio:
        level = [_faddp(level[2 * j], level[2 * j + 1]) for j in range(len(level) // 2)]
        step *= 2
    return level


def make_expand_pack_neon(m: int, n: int, k: int, ratio: int, unit_slopes: bool = False) -> tirx.PrimFunc:
    """PrimFunc ``(a_bits [M,Kw], x [M,C], w_t [Kw,N], params [N/4,4,4], mb2 [C], bits [M,N/64], pooled [M,C])``
    with ``C = K = N / ratio`` (rows parallel); ``params``/``mb2`` from :func:`fold_params`;
    ``unit_slopes``: every slope is in ``[0, 1]`` (:func:`unit_slopes`).

    The loop body is 32 channels, half an output word, stored as its uint32 (little-endian: the low
    half first): a body of 16 vectors let LLVM start all 16 popcounts first and then shuffle and
    spill their results (22 ``mov`` and 48 single ``ldr`` in a 64-channel body on Cortex-A72)."""
    if not supports(m, n, k, ratio):
        raise ValueError(f"the NEON expand-pack needs N = ratio * K, N a multiple of 64, ratio in 1..8 (power of 2); "
                         f"got M={m}, N={n}, K={k}, ratio={ratio}")
    kw, halves, c = num_words(k), n // HALF_BITS, k
    per_half = HALF_BITS // ratio  # means per 32 channels
    f32x4 = lambda v: tirx.Broadcast(tirx.const(v, "float32"), VEC)  # noqa: E731
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            a = T.arg("a_bits", T.Buffer((m, kw), "uint64"))
            x = T.arg("x", T.Buffer((m, c), "float32"))
            w_t = T.arg("w_t", T.Buffer((kw, n), "uint64"))
            params = T.arg("params", T.Buffer((n // VEC, len(PARAMS), VEC), "float32"))
            mb2 = T.arg("mb2", T.Buffer((c,), "float32"))
            bits64 = T.arg("bits", T.Buffer((m, n // LANES), "uint64"))
            pooled = T.arg("pooled", T.Buffer((m, c), "float32"))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            bits = T.decl_buffer((m, halves), "uint32", data=bits64.data)
            with T.parallel(0, m) as i:
                with T.serial(0, halves) as hb:
                    negs, us = [], []
                    for q in range(HALF):
                        col = hb * HALF_BITS + VEC * q

                        def p(nm: str) -> tirx.Expr:
                            return tirx.BufferLoad(params, [hb * HALF + q, PARAMS.index(nm), tirx.Ramp(0, 1, VEC)])

                        popc = _popc_quad(a, w_t, i, col, kw).astype("float32x4")  # ucvtf: exact
                        # The residual repeats x every C channels; 4 | C, so 4 channels are contiguous in x.
                        if c % HALF_BITS == 0:
                            res = tirx.BufferLoad(x, [i, tirx.Ramp(tirx.floormod(hb * HALF_BITS, c) + VEC * q, 1, VEC)])
                        else:
                            res = tirx.BufferLoad(x, [i, tirx.Ramp(tirx.floormod(col, c), 1, VEC)])
                        pre = popc * p("ns2") + p("c0") + res
                        if unit_slopes:  # 0 <= slope <= 1: max(pre, slope * pre) is the RPReLU, exactly
                            u = _intrin("float32x4", "llvm.aarch64.neon.fmax.v4f32", pre, pre * p("slope"))
                        else:
                            u = tirx.Select(pre < f32x4(0.0), pre * p("slope"), pre)
                        us.append(u)
                        negs.append(p("thr") > u)
                    T.buffer_store(bits, sign_half(negs), [i, hb])
                    inv = f32x4(1.0 / ratio)
                    for j, s in enumerate(_group_sums(us, ratio)):
                        cols = tirx.Ramp(hb * per_half + VEC * j, 1, VEC)
                        T.buffer_store(pooled, s * inv + tirx.BufferLoad(mb2, [cols]), [i, cols])
    return ib.get()


def folded_module(m: int, n: int, k: int, ratio: int, unit_slopes: bool, target: object = None) -> "tvm.IRModule":
    """The kernel as a module (``main``), for the lowering tables (``target``: unused, aarch64 only)."""
    import tvm

    return tvm.IRModule({"main": make_expand_pack_neon(m, n, k, ratio, unit_slopes)})
