"""``BinaryExpandPack`` on CPUs: XNOR/popcount GEMM whose epilogue writes packed bits and channel means.

Per token row ``i`` and block of 64 output channels (one output word), in vector registers:

    d   = (K - 2 popc(a[i] ^ w[j])) * scale[j] + bias[j]        (the binary linear, BN folded)
    h   = prelu(d + x[i, j mod C] - b1[j], slope[j]) + b2[j]    (residual repeat + RPReLU)
    bits[i, block]  = mask(h + next_shift < 0)                  (one 64-lane compare, as in pack.py)
    pooled[i, c]    = mean(h[c * ratio : (c + 1) * ratio])      (the output layer's pooled residual)

so ``h`` (BHViT-Tiny stage 1: 3136 x 512 floats, 6.4 MB) never reaches memory; the only writes are
the words (N/64 per row) and the means (C per row). This is Larq Compute Engine's "bitpacked
output" applied to the MLP, plus the residual that BHViT's MLP needs from the same values.

Rows run in parallel; the weights come transposed (``[Kw, N]``, done once at import) so each K word
of a row XORs contiguous 64-column vectors. K is small here (C = 64..512 bits, 1..8 words), so
the work per row is the epilogue, which is why it is fused rather than tiled like ``bgemm``.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .reference import WORD_BITS, num_words
from .target_info import TargetLike, is_aarch64

LANES = WORD_BITS  # one output word = 64 channels per block
#: K words a uint8 ``cnt`` sum can take before widening: each word adds <= 8 per byte lane.
U8_CHUNK_WORDS = 255 // 8


def _butterfly(ratio: int) -> bool:
    """Power-of-two groups of at most 16 lanes (one AVX-512 register): the shuffle tree applies."""
    return ratio > 1 and ratio & (ratio - 1) == 0 and ratio <= 16


def _group_sums(h: tirx.Expr, ratio: int) -> tirx.Expr:
    """Sums of ``ratio`` consecutive lanes of the 64-lane ``h``, as ``64 / ratio`` lanes.

    A butterfly: ``h + h[i ^ 1]``, then ``^ 2``, ``^ 4``...: every lane of a group ends up with the
    group's sum; the shuffles stay inside 128/256-bit lanes (``vpermilps``/``vshuff``, one uop each),
    and one final selection takes the first lane of each group. Strided reads of a stack copy cost
    a cross-register permute per output vector plus the stores and reloads (measured 45% of the
    kernel's instructions at ratio 8).
    """
    step = 1
    while step < ratio:
        h = h + tirx.Shuffle([h], [tirx.const(i ^ step, "int32") for i in range(LANES)])
        step *= 2
    return tirx.Shuffle([h], [tirx.const(g * ratio, "int32") for g in range(LANES // ratio)])


def _strided_sums(hb: tirx.Buffer, ratio: int, per_block: int) -> tirx.Expr:
    """The same sums by strided reads of the block's stack copy (any ratio dividing 64)."""
    def part(t: int) -> tirx.Expr:
        return tirx.BufferLoad(hb, [tirx.Ramp(t, ratio, per_block)]) if per_block > 1 else hb[t]

    total = part(0)
    for t in range(1, ratio):
        total = total + part(t)
    return total


def _popc_generic(a: tirx.Buffer, w_t: tirx.Buffer, i: tirx.Expr, cols: tirx.Expr, kw: int) -> tirx.Expr:
    """``popc(a[i] ^ w_t[:, cols])`` as int32x64 through 64-bit lane popcounts (x86: ``vpopcntq``)."""
    acc = tirx.Broadcast(tirx.const(0, "uint64"), LANES)
    for r in range(kw):
        acc = acc + tirx.popcount(tirx.Broadcast(a[i, r], LANES) ^ tirx.BufferLoad(w_t, [r, cols]))
    return acc.astype(f"int32x{LANES}")


def _intrin(dtype: str, name: str, *args: tirx.Expr) -> tirx.Expr:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


def _popc_neon(a: tirx.Buffer, w_t: tirx.Buffer, i: tirx.Expr, col0: tirx.Expr, kw: int, dotprod: bool) -> tirx.Expr:
    """The same sums with NEON ``cnt`` kept narrow across K words, widened once per 4 columns.

    LLVM's lowering of a 64-bit lane popcount is ``cnt`` + three ``uaddlp`` (to .8h, .4s, .2d) per
    128 bits and per K word, then a narrowing to int32. Here the byte counts add up in uint8 across
    K words (``udot`` with ones into uint32 lanes on dotprod CPUs), then ``uaddlp`` twice and one
    ``addp`` give 4 columns' int32 sums: 7 instructions per 4 columns instead of ~10 per K word.
    """
    ones = tirx.Broadcast(tirx.const(1, "uint8"), 16)
    zero32 = tirx.Broadcast(tirx.const(0, "uint32"), 4)
    quads = []
    for q in range(LANES // 4):
        halves = []
        for h in range(2):
            col = col0 + 4 * q + 2 * h
            total = None
            for c0 in range(0, kw, U8_CHUNK_WORDS):
                acc = None
                for r in range(c0, min(kw, c0 + U8_CHUNK_WORDS)):
                    x = tirx.Broadcast(a[i, r], 2) ^ tirx.BufferLoad(w_t, [r, tirx.Ramp(col, 1, 2)])
                    cnt = _intrin("uint8x16", "llvm.ctpop.v16i8", tirx.reinterpret("uint8x16", x))
                    if dotprod:
                        acc = _intrin("uint32x4", "llvm.aarch64.neon.udot.v4i32.v16i8", acc if acc is not None else zero32, cnt, ones)
                    else:
                        acc = cnt if acc is None else acc + cnt
                if not dotprod:
                    acc = _intrin("uint16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", acc)
                    acc = _intrin("uint32x4", "llvm.aarch64.neon.uaddlp.v4i32.v8i16", acc)
                total = acc if total is None else total + acc
            halves.append(total)
        quads.append(_intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", *halves))
    joined = tirx.Shuffle(quads, [tirx.const(j, "int32") for j in range(LANES)])
    return tirx.reinterpret(f"int32x{LANES}", joined)


def declare_args(m: int, n: int, kw: int, c: int, blocks: int) -> tuple:
    """The kernel's signature, inside ``T.prim_func`` (shared by the 64-lane and the NEON kernel, whose
    callers pass the same buffers): ``(a_bits, x, w_t, {scale, bias, b1, slope, b2, next_shift}, bits, pooled)``."""
    T.func_name("main")
    a = T.arg("a_bits", T.Buffer((m, kw), "uint64"))
    x = T.arg("x", T.Buffer((m, c), "float32"))
    w_t = T.arg("w_t", T.Buffer((kw, n), "uint64"))
    vecs = {nm: T.arg(nm, T.Buffer((n,), "float32")) for nm in ("scale", "bias", "b1", "slope", "b2", "next_shift")}
    bits = T.arg("bits", T.Buffer((m, blocks), "uint64"))
    pooled = T.arg("pooled", T.Buffer((m, c), "float32"))
    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
    return a, x, w_t, vecs, bits, pooled


def expand_pack_module(m: int, n: int, k: int, ratio: int, target: TargetLike) -> "tvm.IRModule":
    """Scheduled module for ``target`` with the op's six per-channel vectors as arguments. On aarch64
    the NEON popcount in the 64-lane kernel; where those vectors are constants, aarch64 takes
    :mod:`expand_pack_neon` instead (the lowering tables' ``expand_pack_folded``)."""
    import tvm

    neon = is_aarch64(target)
    dotprod = False
    if neon:
        from .neon_gemm import has_dotprod

        dotprod = has_dotprod(target)
    return tvm.IRModule({"main": make_expand_pack(m, n, k, ratio, neon=neon, dotprod=dotprod)})


def make_expand_pack(m: int, n: int, k: int, ratio: int, *, neon: bool = False, dotprod: bool = False) -> tirx.PrimFunc:
    """PrimFunc ``(a_bits [M,Kw], x [M,C], w_t [Kw,N], scale, bias, b1, slope, b2, next_shift [N],
    bits [M, N/64] u64, pooled [M, C] f32)`` with ``C = K = N / ratio`` (scheduled, rows parallel).

    ``neon``: the popcount as NEON intrinsics (:func:`_popc_neon`; aarch64 targets only)."""
    if min(m, n, k, ratio) < 1:
        raise ValueError(f"expand-pack needs positive M, N, K, ratio; got {(m, n, k, ratio)}")
    if n % LANES or n != ratio * k or LANES % ratio:
        raise ValueError(f"expand-pack needs N = ratio * K with N a multiple of 64 and ratio | 64; got N={n}, K={k}, ratio={ratio}")
    kw, blocks, c = num_words(k), n // LANES, k
    per_block = LANES // ratio  # pooled outputs per 64-channel block
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            a, x, w_t, vecs, bits, pooled = declare_args(m, n, kw, c, blocks)
            with T.parallel(0, m) as i:
                # One stack buffer per row task: the block's h, stored once and read back for the
                # sign mask and the channel means (no recomputation of h per use).
                hb = T.alloc_buffer((LANES,), "float32", scope="global")
                with T.serial(0, blocks) as blk:
                    cols = tirx.Ramp(blk * LANES, 1, LANES)
                    popc = _popc_neon(a, w_t, i, blk * LANES, kw, dotprod) if neon else _popc_generic(a, w_t, i, cols, kw)
                    dot = tirx.Broadcast(tirx.const(k, "int32"), LANES) - tirx.Broadcast(tirx.const(2, "int32"), LANES) * popc

                    def v(nm: str) -> tirx.Expr:
                        return tirx.BufferLoad(vecs[nm], [cols])

                    d = dot.astype(f"float32x{LANES}") * v("scale") + v("bias")
                    if c % LANES == 0:
                        res = tirx.BufferLoad(x, [i, tirx.Ramp(tirx.floormod(blk * LANES, c), 1, LANES)])
                    else:
                        res = tirx.BufferLoad(x, [i, tirx.floormod(cols, tirx.Broadcast(tirx.const(c, "int32"), LANES))])
                    pre = d + res - v("b1")
                    neg = pre < tirx.Broadcast(f32(0.0), LANES)
                    h = tirx.Select(neg, pre * v("slope"), pre) + v("b2")
                    T.buffer_store(hb, h, [tirx.Ramp(0, 1, LANES)])
                    hs = tirx.BufferLoad(hb, [tirx.Ramp(0, 1, LANES)]) + v("next_shift")
                    mask = hs < tirx.Broadcast(f32(0.0), LANES)
                    T.buffer_store(bits, tirx.reinterpret("uint64", tirx.Cast(f"uint1x{LANES}", mask)), [i, blk])
                    hv = tirx.BufferLoad(hb, [tirx.Ramp(0, 1, LANES)])
                    total = _group_sums(hv, ratio) if _butterfly(ratio) else _strided_sums(hb, ratio, per_block)
                    mean = total / (tirx.Broadcast(f32(float(ratio)), per_block) if per_block > 1 else f32(float(ratio)))
                    out_cols = tirx.Ramp(blk * per_block, 1, per_block) if per_block > 1 else blk
                    T.buffer_store(pooled, mean, [i, out_cols])
    return ib.get()
