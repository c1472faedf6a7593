"""Sign bits from NEON ``float32x4`` compares: packed words without 64-lane shuffles.

Used by the aarch64 kernels that pack floats on the fly (:mod:`pack_neon`, :mod:`expand_pack_neon`,
:mod:`attention_neon`). The all-ones/zero masks of 8 compares (32 channels) are merged by a chain of
shift-left-and-insert, ``acc = sli(mask_q, acc, 4)`` from the last compare down: ``sli`` keeps the
low 4 bits of ``mask_q`` under ``acc << 4``, so lane ``j`` ends with nibble ``q`` all ones where
compare ``q`` was true in that lane; one AND with ``0x11111111 << j`` keeps bit ``4q + j`` (channel
``4q + j``), and two ``addp .4s`` sum the 4 lanes (disjoint bits: sum = OR) into the 32-bit half
word. Bit ``c`` = channel ``c``, little-endian (``docs/packing.md``). One ``sli`` per compare and one
constant, where an AND with a per-compare bit vector and an OR took two instructions and 8
constants (which LLVM rotated through registers with 16 ``mov`` per 32 channels in the
expand-pack); on Cortex-A72 cheaper than narrowing the masks to bytes (``uzp1`` of 128-bit registers
costs 3 half-pipe cycles there) or LLVM's lowering of a 64-lane ``<64 x i1>`` bitcast.
"""

from __future__ import annotations

from typing import Optional, Sequence

from tvm import tirx

QUADS = 16  # float32x4 compares per 64-bit word


HALF = QUADS // 2  # compares per 32-bit half word
VEC = 4  # float32 lanes per compare (one NEON register)
HALF_BITS = HALF * VEC  # channels per half word (one uint32 store)


def _intrin(dtype: str, name: str, *args: tirx.Expr) -> tirx.Expr:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


def half_lanes(negs: Sequence[Optional[tirx.Expr]]) -> tirx.Expr:
    """uint32x4 whose lanes OR to the bits of up to 8 compares (``negs[q]``: bool x4 of channels
    ``4q .. 4q+3``; None: all false, padding); bits past ``4 * len(negs)`` are 0."""
    if not 1 <= len(negs) <= HALF:
        raise ValueError(f"a 32-bit half word takes 1 to {HALF} compares of 4 lanes, got {len(negs)}")
    u32x4 = lambda v: tirx.Broadcast(tirx.const(v, "uint32"), VEC)  # noqa: E731
    masks = [tirx.Select(n, u32x4(0xFFFFFFFF), u32x4(0)) if n is not None else u32x4(0) for n in negs]
    acc = masks[-1]
    for mask in reversed(masks[:-1]):  # each compare's nibble: shift left by VEC bits, insert below
        acc = _intrin("uint32x4", "llvm.aarch64.neon.vsli.v4i32", mask, acc, tirx.const(VEC, "int32"))
    nibbles = sum(1 << (4 * q) for q in range(len(negs)))  # the first mask's copies above are cut here
    lane_bits = u32x4(nibbles) << tirx.Ramp(tirx.const(0, "uint32"), tirx.const(1, "uint32"), VEC)
    return acc & lane_bits


def sign_half(negs: Sequence[Optional[tirx.Expr]]) -> tirx.Expr:
    """The uint32 of up to 8 compares (32 channels; fewer: the high bits 0)."""
    lanes = half_lanes(negs)
    pair = _intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", lanes, lanes)
    return tirx.Shuffle([_intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", pair, pair)], [tirx.const(0, "int32")])


def sign_word(negs: Sequence[Optional[tirx.Expr]]) -> tirx.Expr:
    """The uint64 word of 16 compares (``negs[q]``: bool x4 ``value < 0`` of channels ``4q .. 4q+3``;
    None: all false, padding)."""
    if len(negs) != QUADS:
        raise ValueError(f"a 64-bit word takes {QUADS} compares of 4 lanes, got {len(negs)}")
    addp = lambda x, y: _intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", x, y)  # noqa: E731
    pair = addp(half_lanes(negs[:HALF]), half_lanes(negs[HALF:]))  # [lo0+lo1, lo2+lo3, hi0+hi1, hi2+hi3]
    word = addp(pair, pair)  # [lo, hi, lo, hi]
    return tirx.Shuffle([tirx.reinterpret("uint64x2", word)], [tirx.const(0, "int32")])
