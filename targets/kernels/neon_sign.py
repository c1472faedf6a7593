"""64 sign bits from 16 NEON compares: the packed word of one row, without 64-lane shuffles.

Used by the aarch64 kernels that pack floats on the fly (:mod:`expand_pack_neon`,
:mod:`attention_neon`). Each ``fcmlt`` mask of 4 channels (a ``float32x4`` compare) is AND-ed with
its channels' bits ``1 << (c mod 32)`` in 32-bit lanes, the 8 vectors of each half OR-ed (the bits
are disjoint), and two ``addp .4s`` sum the 4 lanes of each half into ``[lo, hi, lo, hi]``, whose
first 64 bits are the word (bit ``c`` = channel ``c``, little-endian: ``docs/packing.md``). On
Cortex-A72 this is cheaper than narrowing the masks to bytes (``uzp1`` of 128-bit registers costs 3
half-pipe cycles there) or LLVM's lowering of a 64-lane ``<64 x i1>`` bitcast (``addv`` per 16).
"""

from __future__ import annotations

from typing import Optional, Sequence

from tvm import tirx

QUADS = 16  # float32x4 compares per 64-bit word


def sign_word(negs: Sequence[Optional[tirx.Expr]]) -> tirx.Expr:
    """``negs[q]``: the bool x4 ``value < 0`` of channels ``4q .. 4q+3`` (None: all false, padding)."""
    if len(negs) != QUADS:
        raise ValueError(f"a 64-bit word takes {QUADS} compares of 4 lanes, got {len(negs)}")
    u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731
    zero = tirx.Broadcast(u32(0), 4)
    halves = []
    for half in range(2):
        acc = None
        for q in range(8 * half, 8 * half + 8):
            if negs[q] is None:
                continue
            bit = tirx.Broadcast(u32(1), 4) << tirx.Ramp(u32(4 * q % 32), u32(1), 4)
            term = tirx.Select(negs[q], bit, zero)
            acc = term if acc is None else acc | term
        halves.append(zero if acc is None else acc)
    addp = lambda x, y: tirx.call_llvm_pure_intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", x, y)  # noqa: E731
    pair = addp(halves[0], halves[1])  # [lo0+lo1, lo2+lo3, hi0+hi1, hi2+hi3]
    word = addp(pair, pair)  # [lo, hi, lo, hi]
    return tirx.Shuffle([tirx.reinterpret("uint64x2", word)], [tirx.const(0, "int32")])
