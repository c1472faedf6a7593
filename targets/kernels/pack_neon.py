"""Sign-pack on aarch64 NEON: float32 ``[M, K]`` -> uint64 ``[M, ceil(K/64)]``, bit = ``x (+ shift) < 0``.

The arguments and results of :func:`pack.make_pack_vector` (the activation side of every binary op),
written per ``float32x4``: per 4 columns one ``fadd`` of the shift and one ``fcmlt``, the masks of
32 columns merged into a half word by :func:`neon_sign.sign_half` (an ``sli`` each), stored as its
uint32 (little-endian: the low half first). The generic kernel's 64-lane compare is lowered by LLVM
to ``fcmlt`` + ``uzp1`` narrowing + spills: 0.65 ms for Tiny's 212 x 256 attention input on
Cortex-A72 (78 cycles per 91 instructions, a third of them stack reloads). Same bits, bit for bit
(the compare is the same ordered ``<`` on the same sum). A partial last word keeps the scalar form.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .neon_sign import HALF, sign_half
from .pack import _tail_word
from .reference import WORD_BITS, num_words

VEC = 4
HALF_BITS = HALF * VEC  # columns per uint32 store


def make_pack_neon(m: int, k: int, *, shift: bool = False) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x [M,K] f32, [shift [K] f32,] bits [M,Kw] u64)``, rows in parallel."""
    if min(m, k) < 1:
        raise ValueError(f"pack needs positive M, K; got {(m, k)}")
    kw, full = num_words(k), k // WORD_BITS
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), VEC)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            x = T.arg("x", T.Buffer((m, k), "float32"))
            sh = T.arg("shift", T.Buffer((k,), "float32")) if shift else None
            bits = T.arg("bits", T.Buffer((m, kw), "uint64"))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            halves = T.decl_buffer((m, 2 * kw), "uint32", data=bits.data)
            with T.parallel(0, m) as i:
                if full:
                    with T.serial(0, 2 * full) as h:
                        negs = []
                        for q in range(HALF):
                            cols = tirx.Ramp(h * HALF_BITS + VEC * q, 1, VEC)
                            val = tirx.BufferLoad(x, [i, cols])
                            if sh is not None:
                                val = val + tirx.BufferLoad(sh, [cols])
                            negs.append(val < zero)
                        T.buffer_store(halves, sign_half(negs), [i, h])
                if kw > full:
                    T.buffer_store(bits, _tail_word(x, sh, i, full * WORD_BITS, k), [i, full])
    return ib.get()
