"""CUDA schedules of the packed kernels: bit-packing stages and the popcount GEMMs.

Same computes as the CPU paths (``pack.make_pack``, ``popcount_gemm.popcount_gemm_stages``, the conv
and attention stages of ``bconv``/``attention``); only the loop nests differ, so the CPU schedules
dispatch here when the target's kind is ``cuda`` (``gpu_bconv``/``gpu_attention`` assemble the
conv and attention kernels from the rules below). On CUDA the popcount accumulators are ``int32``
(``popcount_gemm.acc_dtype_for``): ``__popcll`` returns an int, and one 32-bit register per output
instead of a 64-bit pair halves the accumulator registers and the adds.

* Bit-packing stages (:func:`schedule_bitpack_stage_gpu`: the sign-pack, the attention's ``q``/
  ``k`` bits, the QD level planes): a block stages its rows' source values in shared memory,
  consecutive threads reading consecutive values (coalesced), then each thread ORs the 64 bits of
  one word from shared memory, the threads of a warp on 32 consecutive rows of a row stride padded
  to one bank past a multiple of 32 (conflict-free). TIR has no warp ballot, which would avoid the
  staging; ``gpu_emulation.PackStats`` measures both claims on the emulated decomposition.
* Popcount GEMM (:func:`schedule_popcount_gemm_gpu`, and :func:`schedule_batched_popcount_gpu` with
  a batch on ``blockIdx.z``): the classic shared-memory tiled GEMM. A block of ``ty x tx`` threads
  owns a ``(ty*tm) x (tx*tn)`` output tile, each thread a ``tm x tn`` accumulator tile in registers; the
  words of ``a`` and ``w`` for one K chunk are staged in shared memory by all threads of the block.
  The CPU kernel's transpose stage ``w_t`` is inlined: on the GPU the shared tile of ``w`` is read
  row-wise with an odd row stride (``storage_align``), which is bank-conflict free for 64-bit words
  without a global transpose. The default ``tn = 1`` gives the threads of a warp consecutive
  columns, so they read consecutive ``w`` rows and store consecutive outputs (coalesced); the
  rows of ``a`` are broadcast. (Interleaving columns with ``tn > 1`` would need the epilogue's
  loops split the same way: ``reverse_compute_at`` covers the hull of a thread's columns, which
  then overlaps the neighbours' registers, so a thread's ``tn`` columns are contiguous instead.)

:func:`serialize_threads` turns a GPU-scheduled kernel into one the CPU can run (thread loops
serial, shared/local buffers global), which is how the tests check these schedules' numerics on a
machine without a GPU: index arithmetic, predicates on ragged tiles, staging regions and the
reduction init are all kept; only the parallel execution (and ``__syncthreads``) is not exercised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import tvm
from tvm import tirx

from bhvit_export.targets.kernels.reference import WORD_BITS
from bhvit_export.targets.kernels.target_info import TargetLike, as_target

#: Block names of the computes (kept in sync with ``pack.PACK_BLOCK`` / ``popcount_gemm``; duplicated
#: rather than imported because those modules import this one lazily).
_PACK_BLOCK = "pack"
_TRANSPOSE_BLOCK = "w_t"
_ACC_BLOCK = "popc"
_OUT_BLOCK = "out"


def is_cuda(target: TargetLike) -> bool:
    """True when ``target`` is a CUDA device target (what the kernel schedules dispatch on)."""
    return as_target(target).kind.name == "cuda"


def _max_threads(target: TargetLike) -> int:
    return int(as_target(target).attrs.get("max_num_threads", 1024))


#: Threads per block of the bit-packing stages.
PACK_THREADS = 128
#: Words (of 64 bits) per block row in a packing stage: 4 words = 256 floats = 1 KB per row.
PACK_WORDS = 4


def _pow2_at_most(extent: int, want: int) -> int:
    """Largest power of two not above ``min(extent, want)`` (1 at least)."""
    out = 1
    while out * 2 <= min(extent, want):
        out *= 2
    return out


#: Floats of the largest shared source tile of a packing stage (32 KB).
PACK_SHARED_FLOATS = 8192


def pack_tile(rows: int, words: int, bits: int, threads: int = PACK_THREADS) -> tuple[int, int]:
    """``(W, R)``: words and rows per block of a packing stage.

    When the row's last word is partial (``bits % 64``), the kernel clamps its column index to
    ``bits - 1``; a block owning only some of a row's words would then stage a column range whose
    extent depends on the block index, which TVM cannot size statically (it falls back to the
    whole source in shared memory). So a partial row is owned whole (``W = words``); a full one
    is split into the largest divisor of ``words`` up to :data:`PACK_WORDS`. ``R`` is the power of
    two filling ``threads`` without passing the row count or :data:`PACK_SHARED_FLOATS`.
    """
    if bits % WORD_BITS:
        tw = words
    else:
        tw = max(d for d in range(1, min(words, PACK_WORDS) + 1) if words % d == 0)
    cap = max(1, min(threads // tw, PACK_SHARED_FLOATS // (tw * WORD_BITS)))
    return tw, _pow2_at_most(rows, cap)


def _align_rows(sch: tvm.s_tir.Schedule, cache: "tvm.s_tir.schedule.SBlockRV", ndim: int, elem_bytes: int) -> None:
    """Pad the row stride of a shared tile to one 4-byte bank past a multiple of 32 banks, so the
    threads of a warp (consecutive rows, same column) hit 32 different banks."""
    if elem_bytes in (1, 2, 4):
        sch.storage_align(cache, 0, axis=ndim - 2, factor=128 // elem_bytes, offset=4 // elem_bytes)


def schedule_bitpack_stage_gpu(
    sch: tvm.s_tir.Schedule,
    block: str,
    *,
    batch: tuple[int, ...],
    row: int,
    word: int,
    source: str,
    bits: int,
    threads: int = PACK_THREADS,
) -> None:
    """Coalesced GPU schedule of a stage that packs 64 consecutive source values into each word.

    ``batch``/``row``/``word``: positions of those loops among the block's loops (a trailing
    reduction over the 64 bits, as in :func:`pack.make_pack`, is handled too); ``source``: the name
    of the buffer the bits are read from (float32 or uint8, its last axis contiguous); ``bits``:
    the number of valid bits per row (the packed length, ``K``), which decides the tile
    (:func:`pack_tile`).

    A block owns ``R x W`` words (``R`` rows, ``W`` words, :func:`pack_tile`). Its source tile
    (``R`` rows x ``64 W`` columns) is first staged in shared memory by all threads, consecutive
    threads reading consecutive columns (coalesced, 128-byte lines); then thread ``(x, y)`` builds
    the word ``y`` of row ``x`` from shared memory. Threads of a warp are consecutive *rows* of the
    tile, whose stride is padded to ``32 k + 1`` banks (:func:`_align_rows`): 32 distinct banks per
    load when the tile has 32 rows or more (every BHViT shape; a tile of fewer rows puts several
    words of a row in one warp, a ``W``-way conflict that ``gpu_emulation.PackStats`` reports). (One thread per word reading its 64 floats straight from global memory, the previous
    form, made every warp load touch 32 lines for 128 useful bytes.)
    """
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    rows, words = int(sch.get(loops[row]).extent), int(sch.get(loops[word]).extent)
    tw, tr = pack_tile(rows, words, bits, threads)
    br, xr = sch.split(loops[row], [None, tr])
    bw, yw = sch.split(loops[word], [None, tw])
    outer = [loops[i] for i in batch]
    rest = [lp for i, lp in enumerate(loops) if i not in (*batch, row, word)]
    sch.reorder(*outer, br, bw, xr, yw, *rest)
    sch.bind(sch.fuse(*outer, br) if outer else br, "blockIdx.y")
    sch.bind(bw, "blockIdx.x")
    sch.bind(xr, "threadIdx.x")
    sch.bind(yw, "threadIdx.y")
    idx = _read_index(sch, blk, source)
    buf = sch.get(blk).reads[idx].source
    cache = sch.cache_read(blk, idx, "shared", consumer_blocks=[blk])
    sch.compute_at(cache, bw, preserve_unit_loops=True)
    _align_rows(sch, cache, len(buf.shape), tvm.DataType(buf.dtype).bits // 8)
    fetch = sch.get_loops(cache)[2:]  # under the two block loops
    _, fy, fx = sch.split(sch.fuse(*fetch), [None, tw, tr])
    sch.bind(fy, "threadIdx.y")
    sch.bind(fx, "threadIdx.x")
    if rest:  # the 64-bit reduction of pack.make_pack: accumulate the word in a register
        sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(sch.get_sblock(block + "_local"), yw)
        sch.unroll(rest[-1])
        sch.decompose_reduction(blk, rest[-1])


def schedule_pack_gpu(func: tirx.PrimFunc, target: TargetLike, *, threads: int = PACK_THREADS) -> tvm.IRModule:
    """Sign-pack ``[M, K] -> [M, Kw]``: :func:`schedule_bitpack_stage_gpu` (coalesced, via shared)."""
    sch = tvm.s_tir.Schedule(func)
    k = int(func.params[0].shape[1])  # x [M, K]
    schedule_bitpack_stage_gpu(
        sch, _PACK_BLOCK, batch=(), row=0, word=1, source="x", bits=k, threads=min(threads, _max_threads(target))
    )
    return sch.mod


@dataclass(frozen=True)
class GemmTiles:
    """Thread-block shape of the popcount GEMM: ``ty x tx`` threads, ``tm x tn`` outputs each,
    ``kc`` words of K per shared-memory stage."""

    ty: int = 4
    tx: int = 32
    tm: int = 4
    tn: int = 1
    kc: int = 8


def _fit(extent: int, want: int) -> int:
    """``want`` shrunk to a power of two not above ``extent`` (no idle threads on tiny dims)."""
    return _pow2_at_most(extent, want)


def schedule_popcount_gemm_gpu(
    func: tirx.PrimFunc, target: TargetLike, tiles: GemmTiles = GemmTiles()
) -> tvm.IRModule:
    """Shared-memory tiled schedule of a kernel built on ``popcount_gemm.popcount_gemm_stages``.

    Ragged M/N/K tails are predicated (TVM adds the guards), so any static shape works; the thread
    counts shrink for small M/N so tiny GEMMs do not launch mostly idle blocks.
    """
    sch = tvm.s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock(_TRANSPOSE_BLOCK))
    acc = sch.get_sblock(_ACC_BLOCK)
    out = sch.get_sblock(_OUT_BLOCK)
    i, j, r = sch.get_loops(acc)
    m, n, kw = (int(sch.get(lp).extent) for lp in (i, j, r))
    tx = _fit(n, tiles.tx)
    ty = _fit(m, min(tiles.ty, _max_threads(target) // tx))
    tm = min(tiles.tm, max(1, m // ty))
    tn = min(tiles.tn, max(1, n // tx))
    kc = min(tiles.kc, kw)

    bi, ti, ii = sch.split(i, [None, ty, tm])
    bj, tj, jj = sch.split(j, [None, tx, tn])
    ro, ri = sch.split(r, [None, kc])
    sch.reorder(bi, bj, ti, tj, ro, ri, ii, jj)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(ti, "threadIdx.y")
    sch.bind(tj, "threadIdx.x")

    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, tj)
    for idx in (0, 1):  # a, w: stage the K chunk of the block's rows through shared memory
        _stage_shared(sch, acc, idx, ro, 5, ty, tx)  # its loops under bi, bj, ti, tj, ro
    for lp in sch.get_loops(out)[4:]:
        sch.unroll(lp)
    sch.decompose_reduction(acc, ro)
    for lp in sch.get_loops(acc)[-3:]:
        sch.unroll(lp)
    return sch.mod


@dataclass(frozen=True)
class BlockPlan:
    """The decomposition a batched popcount GEMM runs with (what :func:`gemm_plan` decides):
    ``ty x tx`` threads, ``tm`` rows per thread, ``kc`` words per shared-memory stage."""

    ty: int
    tx: int
    tm: int
    kc: int


def gemm_plan(m: int, n: int, kw: int, tiles: GemmTiles = GemmTiles(), max_threads: int = 1024) -> BlockPlan:
    """Tiles of :func:`schedule_batched_popcount_gpu` for an ``m x n`` output over ``kw`` words:
    the wanted tiles shrunk to the problem (powers of two, so no block of mostly idle threads)."""
    tx = _fit(n, tiles.tx)
    ty = _fit(m, min(tiles.ty, max_threads // tx))
    return BlockPlan(ty=ty, tx=tx, tm=min(tiles.tm, max(1, m // ty)), kc=min(tiles.kc, kw))


def _read_index(sch: tvm.s_tir.Schedule, blk: "tvm.s_tir.schedule.SBlockRV", name: str) -> int:
    """Position of the read of buffer ``name`` among ``blk``'s reads (for ``cache_read``)."""
    idx = [i for i, region in enumerate(sch.get(blk).reads) if region.source.name == name]
    if len(idx) != 1:
        raise ValueError(f"expected one read of {name!r}, got {len(idx)}")
    return idx[0]


def _stage_shared(
    sch: tvm.s_tir.Schedule, acc: Any, read: int, ro: Any, outer: int, ty: int, tx: int,
    consumer_blocks: Optional[list] = None,
) -> None:
    """Stage read ``read`` of ``acc`` through shared memory at the K-chunk loop ``ro``, its rows padded
    to an odd stride, the copy spread over the block's ``ty x tx`` threads (its loops after the first
    ``outer`` fused). A region whose size depends on the block (a grouped conv whose column tile
    crosses groups of an odd width) is not split: TVM's iter_affine_map refuses it, so every thread
    of the block copies it, which is correct and only slower for such shapes."""
    source = sch.get(acc).reads[read].source
    kwargs = {} if consumer_blocks is None else {"consumer_blocks": consumer_blocks}
    cache = sch.cache_read(acc, read, "shared", **kwargs)
    sch.compute_at(cache, ro, preserve_unit_loops=True)  # unit K (Kw = 1) keeps its loop
    sch.storage_align(cache, 0, axis=len(source.shape) - 2, factor=2, offset=1)
    fused = sch.fuse(*sch.get_loops(cache)[outer:])
    if isinstance(sch.get(fused).extent, tirx.IntImm):
        _, fy, fx = sch.split(fused, [None, ty, tx])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")


def schedule_batched_popcount_gpu(
    sch: tvm.s_tir.Schedule,
    acc_name: str,
    out_name: str,
    target: TargetLike,
    *,
    stage: tuple[str, ...],
    tiles: GemmTiles = GemmTiles(),
) -> None:
    """The shared-memory tiled popcount GEMM of :func:`schedule_popcount_gemm_gpu`, batched.

    ``acc`` has loops ``(batch, row, column, reduction)`` (the conv's ``(b, pixel, channel, word)``,
    the scores' ``(b*h, query, key, word)``, the QD context's ``(b, query, channel, word)``) and
    ``out`` is its elementwise epilogue. The batch is ``blockIdx.z``; a block of ``ty x tx``
    threads owns ``(ty*tm) x tx`` outputs, thread ``(y, x)`` a ``tm x 1`` column of int32
    accumulators in registers; the words of every buffer in ``stage`` for one chunk of ``kc``
    words are staged in shared memory by the whole block (coalesced: consecutive threads fetch
    consecutive words), with an odd row stride. Consecutive threads of a warp own consecutive
    columns, so the epilogue's stores coalesce.
    """
    acc = sch.get_sblock(acc_name)
    out = sch.get_sblock(out_name)
    b, i, j, r = sch.get_loops(acc)
    m, n, kw = (int(sch.get(lp).extent) for lp in (i, j, r))
    plan = gemm_plan(m, n, kw, tiles, _max_threads(target))
    ty, tx, tm, kc = plan.ty, plan.tx, plan.tm, plan.kc
    bi, ti, ii = sch.split(i, [None, ty, tm])
    bj, tj = sch.split(j, [None, tx])
    ro, ri = sch.split(r, [None, kc])
    sch.reorder(b, bi, bj, ti, tj, ro, ri, ii)
    sch.bind(b, "blockIdx.z")
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(ti, "threadIdx.y")
    sch.bind(tj, "threadIdx.x")
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(out, tj)
    for name in stage:  # loops under b, bi, bj, ti, tj, ro
        _stage_shared(sch, acc, _read_index(sch, acc, name), ro, 6, ty, tx, consumer_blocks=[acc])
    for lp in sch.get_loops(out)[5:]:
        sch.unroll(lp)
    sch.decompose_reduction(acc, ro)
    for lp in sch.get_loops(acc)[-2:]:
        sch.unroll(lp)


def schedule_elementwise_gpu(sch: tvm.s_tir.Schedule, block: str, target: TargetLike, *, threads: int = 256) -> None:
    """All loops of ``block`` fused, one thread per element (coalesced when the last axis is the
    contiguous one in both the reads and the write)."""
    blk = sch.get_sblock(block)
    fused = sch.fuse(*sch.get_loops(blk))
    total = int(sch.get(fused).extent)
    bx, tx = sch.split(fused, [None, min(threads, _max_threads(target), total)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def schedule_columns_gpu(sch: tvm.s_tir.Schedule, block: str, target: TargetLike, *, threads: int = 128) -> None:
    """One thread per element, the *last* loop split across ``threadIdx.x`` and the others fused
    into ``blockIdx.y``: for stages whose output column is also the contiguous axis of every read
    (the conv's im2col along pixels, the QD ``v`` bits along features), so a warp reads
    consecutive addresses at every step of its unrolled 64-bit loop."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    last = loops[-1]
    bx, tx = sch.split(last, [None, _pow2_at_most(int(sch.get(last).extent), min(threads, _max_threads(target)))])
    sch.reorder(*loops[:-1], bx, tx)
    sch.bind(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0], "blockIdx.y")
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def serialize_threads(mod: tvm.IRModule) -> tvm.IRModule:
    """CPU-runnable copy of a GPU-scheduled module: thread-bound loops become serial loops and
    ``shared``/``local`` buffers become ``global``.

    Serialising keeps each thread's work in its original nesting, so a cooperative shared-memory
    fetch (bound to the same thread axes) is simply redone in full by every "thread" before use;
    the result is the GPU kernel's arithmetic, run sequentially. The rewrite is done on the
    TVMScript text (two patterns) and re-parsed: TVM 0.27's Python statement-mutator API is in
    flux, the script syntax of these two constructs is not, and the check below fails loudly if
    either pattern stops matching.
    """
    text = _THREAD_LOOP.sub(r"T.serial(\1)", mod.script())
    text = _GPU_SCOPE.sub('scope="global"', text)
    text = _BIG_U64.sub(_split_u64, text)
    if "thread_binding" in text or _GPU_SCOPE.search(text):
        raise RuntimeError("serialize_threads: thread bindings or GPU scopes left after the rewrite")
    return tvm.script.from_source(text)


_THREAD_LOOP = re.compile(r'T\.thread_binding\(([^,()]+), thread="(?:blockIdx|threadIdx)\.[xyz]"\)')
_GPU_SCOPE = re.compile(r'scope="(?:shared|local)"')
#: uint64 literals the script parser refuses (it reads them as int64): bit 63 of a packed word.
_BIG_U64 = re.compile(r"T\.uint64\((\d{19,20})\)")


def _split_u64(match: "re.Match[str]") -> str:
    """A uint64 literal of 2^63 or more as ``hi << 32 | lo`` (parseable, same value)."""
    value = int(match.group(1))
    if value < 2**63:
        return match.group(0)
    return f"(T.shift_left(T.uint64({value >> 32}), T.uint64(32)) | T.uint64({value & 0xFFFFFFFF}))"
