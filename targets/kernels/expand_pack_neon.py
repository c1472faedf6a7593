"""``BinaryExpandPack`` for aarch64 NEON, written per 128-bit register instead of per 64-lane block.

Same arguments and results as :func:`expand_pack.make_expand_pack` (the numpy reference is
``passes/ops.py``'s ``BinaryExpandPack`` body; ``tests/targets/test_neon_kernels.py`` compares).
Why a separate kernel: the generic one writes each 64-channel block as one 64-lane vector, which
LLVM splits into 16 NEON registers and then lowers the 64-lane shuffles of the sign mask and the
channel means lane by lane (``rev64``/``dup``/``zip1``/``ext``/``addv``: ~100 of the ~570
instructions of a block at Tiny's stage 1, 373 cycles per block by llvm-mca on Cortex-A72). Here
each step is what NEON does natively, per 4 output channels (one ``float32x4``):

* popcount: ``eor`` + ``cnt`` per 2 columns and K word, the byte counts added across K words in
  uint8 (``add .16b``), then ``addp .16b`` of the two vectors of 4 columns (4 bytes per column),
  ``uaddlp`` twice -> the 4 column sums as uint32x4. 3 widening instructions per 4 columns instead
  of 4 ``uaddlp`` + 1 ``addp``. ``udot`` (dotprod CPUs) is not used here: with K = 1..8 words the
  byte adds are fewer instructions than ``udot`` into a zeroed accumulator per column pair;
* epilogue: the same float expression as the generic kernel, per float32x4 (``scvtf``, ``fmla``,
  ``fadd``, ``fsub``, ``fcmlt`` + ``bsl`` for the RPReLU, ``fadd``);
* sign mask: ``fcmlt`` per 4 channels AND-ed with the channels' bits, OR-ed per 32 channels, two
  ``addp .4s`` to the output word (:func:`neon_sign.sign_word`);
* channel means: a ``faddp`` tree (level ``L`` adds neighbours ``2^(L-1)`` apart in channel order),
  which adds in exactly the order of the generic kernel's butterfly ``((h0+h1)+(h2+h3))+...``, then
  a multiply by ``1 / ratio`` (a power of two: exact, as the generic kernel's divide).

Supports ratios 1, 2, 4, 8, 16 (:func:`supports`); others keep the generic kernel.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .expand_pack import declare_args
from .neon_sign import sign_word
from .reference import WORD_BITS, num_words

LANES = WORD_BITS  # output channels per block: one output word
VEC = 4  # float32 lanes per NEON register
QUADS = LANES // VEC
#: K words whose byte counts fit uint8 after one pairwise add: each word adds <= 8 per byte lane,
#: and the ``addp .16b`` before widening doubles it: 16 * words <= 255.
U8_CHUNK_WORDS = 255 // 16


def supports(ratio: int) -> bool:
    """Power-of-two ratios up to 16: the ``faddp`` tree has the generic kernel's addition order."""
    return ratio in (1, 2, 4, 8, 16)


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


def _group_means(h: list[tirx.Expr], ratio: int) -> list[tirx.Expr]:
    """Means of ``ratio`` consecutive channels (``ratio`` <= 16) as ``16 / ratio`` float32x4 vectors."""
    level = list(h)
    step = 1
    while step < ratio:
        level = [_intrin("float32x4", "llvm.aarch64.neon.faddp.v4f32", level[2 * j], level[2 * j + 1])
                 for j in range(len(level) // 2)]
        step *= 2
    if ratio == 1:
        return level
    inv = tirx.Broadcast(tirx.const(1.0 / ratio, "float32"), VEC)
    return [v * inv for v in level]


def make_expand_pack_neon(m: int, n: int, k: int, ratio: int) -> tirx.PrimFunc:
    """PrimFunc with the arguments of :func:`expand_pack.make_expand_pack` (rows parallel)."""
    if min(m, n, k, ratio) < 1:
        raise ValueError(f"expand-pack needs positive M, N, K, ratio; got {(m, n, k, ratio)}")
    if n % LANES or n != ratio * k or not supports(ratio):
        raise ValueError(f"the NEON expand-pack needs N = ratio * K, N a multiple of 64, ratio in 1..16 (power of 2); "
                         f"got N={n}, K={k}, ratio={ratio}")
    kw, blocks, c = num_words(k), n // LANES, k
    per_block = LANES // ratio
    f32x4 = lambda v: tirx.Broadcast(tirx.const(v, "float32"), VEC)  # noqa: E731
    i32x4 = lambda v: tirx.Broadcast(tirx.const(v, "int32"), VEC)  # noqa: E731
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            a, x, w_t, vecs, bits, pooled = declare_args(m, n, kw, c, blocks)
            with T.parallel(0, m) as i:
                with T.serial(0, blocks) as blk:
                    hs, hv = [], []
                    for q in range(QUADS):
                        col = blk * LANES + VEC * q
                        cols = tirx.Ramp(col, 1, VEC)

                        def v(nm: str) -> tirx.Expr:
                            return tirx.BufferLoad(vecs[nm], [cols])

                        popc = tirx.reinterpret("int32x4", _popc_quad(a, w_t, i, col, kw))
                        dot = i32x4(k) - i32x4(2) * popc
                        d = dot.astype("float32x4") * v("scale") + v("bias")
                        # The residual repeats x every C channels; 4 | C (64 | ratio * C, ratio <= 16),
                        # so each 4 channels are contiguous in x.
                        if c % LANES == 0:  # the block's 64 residual channels are contiguous
                            res = tirx.BufferLoad(x, [i, tirx.Ramp(tirx.floormod(blk * LANES, c) + VEC * q, 1, VEC)])
                        else:
                            res = tirx.BufferLoad(x, [i, tirx.Ramp(tirx.floormod(col, c), 1, VEC)])
                        pre = d + res - v("b1")
                        h = tirx.Select(pre < f32x4(0.0), pre * v("slope"), pre) + v("b2")
                        hv.append(h)
                        hs.append(h + v("next_shift"))
                    T.buffer_store(bits, sign_word([hq < f32x4(0.0) for hq in hs]), [i, blk])
                    for j, mean in enumerate(_group_means(hv, ratio)):  # per_block >= 4 (ratio <= 16)
                        T.buffer_store(pooled, mean, [i, tirx.Ramp(blk * per_block + VEC * j, 1, VEC)])
    return ib.get()
