"""Sign-pack on aarch64 NEON: float32 ``[M, K]`` -> uint64 ``[M, ceil(K/64)]``, bit = ``x (+ shift) < 0``.

The arguments and results of :func:`pack.make_pack_vector` (the activation side of every binary op),
written per ``float32x4``: per 4 columns one ``fcmgt`` against the negated shift (``x + shift < 0``
is ``x < -shift``, exactly; the 8 negated shift vectors of a half word serve :data:`ROWS` rows), the
masks of 32 columns merged into a half word by :func:`neon_sign.sign_half` (an ``sli`` each), stored
as its uint32 (little-endian: the low half first). The generic kernel's 64-lane compare is lowered by LLVM
to ``fcmlt`` + ``uzp1`` narrowing + spills: 0.65 ms for Tiny's 212 x 256 attention input on
Cortex-A72 (78 cycles per 91 instructions, a third of them stack reloads). Same bits, bit for bit
(the compare is the same ordered ``<`` on the same sum). A partial last word keeps the scalar form.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .neon_sign import HALF, HALF_BITS, VEC, sign_half
from .pack import _tail_word, declare_pack_args
from .reference import WORD_BITS, num_words

#: Rows per task: the 8 negated shift vectors of a half word are loaded once for this many rows.
ROWS = 4


def make_pack_neon(m: int, k: int, *, shift: bool = False) -> tirx.PrimFunc:
    """Scheduled PrimFunc ``(x [M,K] f32, [shift [K] f32,] bits [M,Kw] u64)``, row blocks in parallel."""
    kw, full = num_words(k), k // WORD_BITS
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), VEC)
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            x, sh, bits = declare_pack_args(m, k, shift)
            halves = T.decl_buffer((m, 2 * kw), "uint32", data=bits.data)
            with T.parallel(0, (m + ROWS - 1) // ROWS) as rb:
                if full:
                    with T.serial(0, 2 * full) as h:
                        # x + shift < 0 <=> x < -shift, exactly: a rounded sum is never of the other sign,
                        # and NaN and inf - inf compare false both ways.
                        limits = [-tirx.BufferLoad(sh, [tirx.Ramp(h * HALF_BITS + VEC * q, 1, VEC)]) if sh is not None
                                  else zero for q in range(HALF)]
                        for r in range(ROWS):
                            i = rb * ROWS + r
                            with T.If(i < m):
                                with T.Then():
                                    negs = [tirx.BufferLoad(x, [i, tirx.Ramp(h * HALF_BITS + VEC * q, 1, VEC)]) < limits[q]
                                            for q in range(HALF)]
                                    T.buffer_store(halves, sign_half(negs), [i, h])
                if kw > full:
                    with T.serial(0, ROWS) as r:
                        i = rb * ROWS + r
                        with T.If(i < m):
                            with T.Then():
                                T.buffer_store(bits, _tail_word(x, sh, i, full * WORD_BITS, k), [i, full])
    return ib.get()


def supports_nhwc(cg: int) -> bool:
    """Channels per group that are whole ``float32x4`` compares of one word: 4, 8, ..., 32 or 64."""
    return cg % VEC == 0 and (cg <= HALF_BITS or cg == WORD_BITS)


def make_sign_pack_nhwc_neon(geom: "ConvGeometry") -> tirx.PrimFunc:
    """:func:`bconv_nhwc.make_sign_pack` on NEON: ``(x [B,H,W,C] f32, shift [C] f32, pk [B,G,PH,PW] u64)``.

    Per pixel and group, ``C/g / 4`` compares against the negated shift (loaded once per row of the
    padded grid: loop-invariant along it) merged by :func:`neon_sign.sign_half` (or ``sign_word`` at
    64 channels). LLVM's lowering of the generic kernel's ``C/g``-lane compare (``uzp1`` narrowing)
    took ~190 cycles per 64-channel pixel on Cortex-A72."""
    from .bconv_nhwc import sign_pack_grid
    from .neon_sign import sign_word

    g = geom
    if not supports_nhwc(g.cg):
        raise ValueError(f"the NEON sign-pack needs C/g in 4, 8, ..., 32 or 64; got {g.cg}")
    quads = g.cg // VEC

    def pixel_word(x: tirx.Buffer, sh: tirx.Buffer, b: tirx.Expr, cy: tirx.Expr, cx: tirx.Expr, grp: int) -> tirx.Expr:
        negs = []
        for q in range(quads):
            cols = tirx.Ramp(grp * g.cg + VEC * q, 1, VEC)
            # x + shift < 0 <=> x < -shift, exactly (see make_pack_neon)
            negs.append(tirx.BufferLoad(x, [b, cy, cx, cols]) < -tirx.BufferLoad(sh, [cols]))
        return sign_word(negs) if quads == 2 * HALF else sign_half(negs).astype("uint64")

    return sign_pack_grid(g, pixel_word)
