"""aarch64 NEON popcount GEMM written as explicit vector TIR (the ``cnt`` + ``uadalp`` / ``udot`` loop).

Why not the generic TE schedule: it accumulates ``popcount(uint64)`` into uint64 lanes, so LLVM
widens every 128-bit ``cnt`` result all the way (``cnt``, ``uaddlp`` .8h/.4s/.2d, ``add``: 5 NEON
ops per 128 bits, ~42% of the NEON limit under llvm-mca). The loop here does what Larq Compute
Engine's kernels do: per 128 bits ``eor``/``and`` + ``cnt`` + one accumulate, keeping narrow sums
in registers and widening once per register tile:

* no ``dotprod``: ``uadalp`` adds the 16 byte counts pairwise into eight 16-bit lanes (4 lanes per
  uint64 column). A lane gains at most 16 per K word and the widening adds two lanes in 16 bits,
  so 16-bit lanes are exact for up to 2047 words (131008 bits); longer K is cut into chunks of
  2047 words, each widened and added into the uint32 sums (BHViT's K <= 2304 bits = 36 words is
  one chunk);
* ``+dotprod`` (Cortex-A55/A76/A78): ``udot`` with a vector of ones sums 4 byte counts into each
  32-bit lane in one instruction (2 lanes per column), no overflow concern.

The tile is ``mr`` rows x ``nr`` columns (``nr`` a multiple of 4). The row word ``a[i, r]`` is
broadcast (``ld1r``) against ``nr / 2`` vectors of the transposed weights ``w_t[r, j:j+nr]``
(two uint64 columns per vector), so both loads stream and the K loop has no horizontal add. Once
per tile, one ``addp`` of two such vectors leaves 2 lanes per column for 4 columns and one
``uaddlp`` (not needed after ``udot``) gives the 4 column sums ``[j, j+1, j+2, j+3]`` as uint32x4, which is what the epilogue works on (int32 is
what every caller converts to anyway: popc <= K < 2^31).

Ragged edges use overlapping tiles instead of predicates: the last row (column) tile starts at
``M - mr`` (``N - nr``) and recomputes a few outputs with identical values, so the vector body has no
masks and no tail loop. This needs ``M >= mr`` and ``N >= nr``; the tile is shrunk to fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script import builder as T

from .reference import num_words
from .target_info import TargetLike, as_target

Combine = Literal["xor", "and"]
WLayout = Literal["nk", "kn"]
#: (popcount sums of 4 columns as int32x4, their column indices as a Ramp, extra argument buffers by
#: name) -> the 4 output elements (a 4-lane vector of the output dtype).
Epilogue = Callable[[tirx.Expr, tirx.Expr, Mapping[str, tirx.Buffer]], tirx.Expr]

#: K words per 16-bit accumulation chunk: a ``uadalp`` lane gains <= 16 per word and the widening
#: ``addp`` adds two lanes before going to 32 bits, so <= 32 per word must fit in 65535.
U16_CHUNK_WORDS = 65535 // 32
#: Parallel tasks the tiles are dealt to (divisible by 1, 2, 3, 4, 6, 8 threads: no idle core).
PARALLEL_TASKS = 48


def has_dotprod(target: TargetLike) -> bool:
    """True when the (aarch64) target has the ``udot`` instruction (``+dotprod`` in mattr or mcpu;
    the architecture record's dot instruction, ``targets/arch.py``)."""
    from bhvit_export.targets.arch import arch_of

    tgt = as_target(target)
    return tgt.kind.name == "llvm" and arch_of(tgt).dotprod


@dataclass(frozen=True)
class NeonTile:
    """Register tile of the NEON loop: ``mr`` rows x ``nr`` uint64 columns (``nr`` a multiple of 4)."""

    mr: int = 4
    nr: int = 8

    def fit(self, m: int, n: int) -> "NeonTile":
        """Shrink to the problem (overlapping edge tiles need ``mr <= M`` and ``nr <= N``)."""
        nr = min(self.nr, n - n % 4)
        return NeonTile(mr=max(1, min(self.mr, m)), nr=nr)


def arch_tile(target: TargetLike) -> dict[str, int]:
    """``{"mr", "nr"}`` of the target's CPU, from the architecture record (``targets/arch.py``)."""
    from bhvit_export.targets.arch import arch_of

    mr, nr = arch_of(target).popcount_tile
    return {"mr": mr, "nr": nr}


def supports_mnk(m: int, n: int, k: int) -> bool:
    """The shapes (M, N, K) of a GEMM this kernel takes (:func:`supports` on N)."""
    return min(m, n, k) >= 1 and supports(n)


def supports(n: int) -> bool:
    """The NEON loop works on groups of 4 columns; N < 4 uses the generic schedule."""
    return n >= 4


def _intrin(dtype: str, name: str, *args: tirx.Expr) -> tirx.Expr:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


def _vec(buf: tirx.Buffer, row: tirx.Expr, col: tirx.Expr, lanes: int) -> tirx.Expr:
    return tirx.BufferLoad(buf, [row, tirx.Ramp(col, 1, lanes)])


#: ``(batch, row, K word, first column of the tile) -> the row's uint64 word`` (the column lets a
#: grouped GEMM pick the group's operand; the tile never straddles groups).
AWord = Callable[[tirx.Expr, tirx.Expr, tirx.Expr, tirx.Expr], tirx.Expr]
#: ``(batch, K word, column j) -> the words of columns j, j + 1`` as uint64x2.
WPair = Callable[[tirx.Expr, tirx.Expr, tirx.Expr], tirx.Expr]
#: ``(batch, row, first of 4 columns, their popcount sums as int32x4)``: emits the output stores.
Store = Callable[[tirx.Expr, tirx.Expr, tirx.Expr, tirx.Expr], None]


def w_columns(w_t: tirx.Buffer) -> WPair:
    """Column pairs of one ``[Kw, N]`` weight buffer shared by every batch."""
    return lambda _bi, r, col: _vec(w_t, r, col, 2)


@dataclass(frozen=True)
class _TilePlan:
    """The loop nest of :func:`emit_tiles`, fixed before any TIR is written."""

    m: int
    n: int
    kw: int
    mr: int
    nr: int
    batch: int
    combine: Combine
    dotprod: bool

    @property
    def pairs(self) -> int:
        """128-bit vectors (2 uint64 columns) per tile row."""
        return self.nr // 2

    @property
    def quads(self) -> int:
        """Widened uint32x4 column sums per tile row."""
        return self.nr // 4

    @property
    def m_tiles(self) -> int:
        return -(-self.m // self.mr)

    @property
    def n_tiles(self) -> int:
        return -(-self.n // self.nr)

    @property
    def acc_lanes(self) -> int:
        """Narrow accumulator lanes per 128-bit vector (2 columns): 8 x u16 (uadalp) or 4 x u32 (udot)."""
        return 4 if self.dotprod else 8

    @property
    def acc_dtype(self) -> str:
        return "uint32" if self.dotprod else "uint16"

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """(first word, words) of each K chunk the narrow lanes sum exactly."""
        chunk = self.kw if self.dotprod else min(self.kw, U16_CHUNK_WORDS)
        return [(c0, min(chunk, self.kw - c0)) for c0 in range(0, self.kw, chunk)]

    def acc_index(self, ii: int, jv: int) -> list:
        return [ii, tirx.Ramp(jv * self.acc_lanes, 1, self.acc_lanes)]


def _accumulate_chunk(p: _TilePlan, acc: tirx.Buffer, a_word: AWord, w_pair: WPair, bi: tirx.Expr,
                      row0: tirx.Expr, col0: tirx.Expr, c0: int, clen: int) -> None:
    """Zero the narrow accumulators, then one K chunk: ``eor``/``and`` + ``cnt`` + one accumulate
    (``uadalp``, or ``udot`` with a ones vector) per 128 bits."""
    zero = tirx.Broadcast(tirx.const(0, p.acc_dtype), p.acc_lanes)
    ones = tirx.Broadcast(tirx.const(1, "uint8"), 16)
    for ii in range(p.mr):
        for jv in range(p.pairs):
            T.buffer_store(acc, zero, p.acc_index(ii, jv))
    with T.serial(0, clen) as rr:
        r = rr + c0
        a_vecs = [tirx.Broadcast(a_word(bi, row0 + ii, r, col0), 2) for ii in range(p.mr)]
        w_vecs = [w_pair(bi, r, col0 + 2 * jv) for jv in range(p.pairs)]
        for ii in range(p.mr):
            for jv in range(p.pairs):
                x = a_vecs[ii] ^ w_vecs[jv] if p.combine == "xor" else a_vecs[ii] & w_vecs[jv]
                cnt = _intrin("uint8x16", "llvm.ctpop.v16i8", tirx.reinterpret("uint8x16", x))
                idx = p.acc_index(ii, jv)
                old = tirx.BufferLoad(acc, idx)
                if p.dotprod:
                    new = _intrin("uint32x4", "llvm.aarch64.neon.udot.v4i32.v16i8", old, cnt, ones)
                else:  # add(acc, uaddlp(x)) is selected as uadalp
                    new = old + _intrin("uint16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", cnt)
                T.buffer_store(acc, new, idx)


def _widen(p: _TilePlan, acc: tirx.Buffer, sums: tirx.Buffer, first: bool) -> None:
    """addp of two pairs' vectors gives 2 lanes per column for columns [j, j+4) (uadalp: u16 lanes,
    then uaddlp to uint32x4; udot: already the uint32x4 sums), stored (first chunk) or added."""
    for ii in range(p.mr):
        for q in range(p.quads):
            halves = [tirx.BufferLoad(acc, p.acc_index(ii, jv)) for jv in (2 * q, 2 * q + 1)]
            if p.dotprod:
                s32 = _intrin("uint32x4", "llvm.aarch64.neon.addp.v4i32", *halves)
            else:
                s16 = _intrin("uint16x8", "llvm.aarch64.neon.addp.v8i16", *halves)
                s32 = _intrin("uint32x4", "llvm.aarch64.neon.uaddlp.v4i32.v8i16", s16)
            idx = [ii, tirx.Ramp(4 * q, 1, 4)]
            T.buffer_store(sums, s32 if first else tirx.BufferLoad(sums, idx) + s32, idx)


def _tile_body(p: _TilePlan, tid: tirx.Expr, acc: tirx.Buffer, sums: tirx.Buffer, a_word: AWord,
               w_pair: WPair, store: Store) -> None:
    """One ``mr x nr`` output tile: narrow accumulation per K chunk, widening, the caller's stores."""
    per_batch = p.m_tiles * p.n_tiles
    bi = tid // per_batch if p.batch > 1 else tirx.const(0, "int32")
    if p.batch > 1:
        tid = T.Bind(tid % per_batch)
    row0 = T.Bind(tirx.min((tid // p.n_tiles) * p.mr, p.m - p.mr))
    col0 = T.Bind(tirx.min((tid % p.n_tiles) * p.nr, p.n - p.nr))
    for c_idx, (c0, clen) in enumerate(p.chunks):
        _accumulate_chunk(p, acc, a_word, w_pair, bi, row0, col0, c0, clen)
        _widen(p, acc, sums, first=c_idx == 0)
    for ii in range(p.mr):
        for q in range(p.quads):
            popc = tirx.reinterpret("int32x4", tirx.BufferLoad(sums, [ii, tirx.Ramp(4 * q, 1, 4)]))
            store(bi, row0 + ii, col0 + 4 * q, popc)


def emit_tiles(
    m: int, n: int, kw: int, *, a_word: AWord, w_pair: WPair, store: Store, combine: Combine,
    tile: NeonTile, dotprod: bool, batch: int = 1,
) -> None:
    """Emit (inside a ``T.prim_func``) the parallel loop over ``batch`` x ``mr x nr`` output tiles.

    ``w_pair`` reads two columns' words (:func:`w_columns` of a ``[Kw, N]`` buffer); ``tile`` must
    already fit (``NeonTile.fit``). Row and column tiles at the edges overlap (:mod:`neon_gemm`'s
    docstring) inside one batch; a grouped caller picks ``nr`` dividing the group width, so column
    tiles are aligned and stay in one group.
    """
    if tile.nr % 4 or tile.nr < 4:
        raise ValueError(f"nr={tile.nr} must be a multiple of 4 (4 column sums per widened vector)")
    p = _TilePlan(m, n, kw, tile.mr, tile.nr, batch, combine, dotprod)
    tiles = batch * p.m_tiles * p.n_tiles
    tasks = min(tiles, PARALLEL_TASKS)
    per_task = -(-tiles // tasks)
    with T.parallel(0, tasks) as task:
        # Allocated once per task: a local buffer inside the parallel loop's body becomes a
        # TVMBackendAllocWorkspace call per iteration, which costs as much as a small tile.
        sums = T.alloc_buffer((p.mr, p.nr), "uint32", scope="global")
        acc = T.alloc_buffer((p.mr, p.pairs * p.acc_lanes), p.acc_dtype, scope="global")
        with T.serial(0, per_task) as step:
            tid = task * per_task + step
            with T.If(tid < tiles):
                with T.Then():
                    _tile_body(p, tid, acc, sums, a_word, w_pair, store)


def neon_popcount_gemm(
    m: int,
    n: int,
    k: int,
    *,
    combine: Combine,
    out_dtype: str,
    epilogue: Epilogue,
    extra_args: Sequence[tuple[str, tuple[int, ...], str]] = (),
    tile: NeonTile = NeonTile(),
    dotprod: bool = False,
    w_layout: WLayout = "nk",
) -> tirx.PrimFunc:
    """PrimFunc ``(a [M,Kw] u64, w, *extra_args, out [M,N] out_dtype)`` for aarch64 NEON.

    ``w`` is ``[N, Kw]`` (the ONNX op's layout; transposed into a scratch buffer on each call) or,
    with ``w_layout="kn"``, already ``[Kw, N]`` (transposed once at import, as the weights are
    constants). ``out[i, j] = epilogue(sum_r popc(a[i, r] OP w[j, r]), j, extras)``.
    """
    if min(m, n, k) < 1:
        raise ValueError(f"popcount GEMM needs positive M, N, K; got {(m, n, k)}")
    if not supports(n):
        raise ValueError(f"the NEON popcount GEMM needs N >= 4, got {n}")
    kw = num_words(k)
    t = tile.fit(m, n)
    if t.nr % 4 or t.nr < 4:
        raise ValueError(f"nr={t.nr} must be a multiple of 4 (4 column sums per widened vector)")
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            a = T.arg("a_bits", T.Buffer((m, kw), "uint64"))
            w_shape = (kw, n) if w_layout == "kn" else (n, kw)
            w = T.arg("w_bits" if w_layout == "nk" else "w_t_bits", T.Buffer(w_shape, "uint64"))
            extras = {name: T.arg(name, T.Buffer(shape, dt)) for name, shape, dt in extra_args}
            out = T.arg("out", T.Buffer((m, n), out_dtype))
            T.func_attr({"tirx.noalias": True})
            if w_layout == "kn":
                w_t = w
            else:
                w_t = T.alloc_buffer((kw, n), "uint64")
                with T.parallel(0, kw) as r:
                    with T.serial(0, n) as j:
                        T.buffer_store(w_t, w[j, r], [r, j])

            def store(_bi: tirx.Expr, row: tirx.Expr, col: tirx.Expr, popc: tirx.Expr) -> None:
                cols = tirx.Ramp(col, 1, 4)
                T.buffer_store(out, epilogue(popc, cols, extras), [row, cols])

            emit_tiles(m, n, kw, a_word=lambda _bi, row, r, _col: a[row, r], w_pair=w_columns(w_t), store=store,
                       combine=combine, tile=t, dotprod=dotprod)
    return ib.get()
