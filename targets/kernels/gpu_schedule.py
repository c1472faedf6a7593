"""CUDA schedules of the packed kernels (sign-pack and the shared popcount GEMM).

Same computes as the CPU paths (``pack.make_pack``, ``popcount_gemm.popcount_gemm_stages``); only the
loop nests differ, so the CPU schedules dispatch here when the target's kind is ``cuda``.

* Sign-pack: one thread per output word, the 64-bit loop unrolled and the word accumulated in a
  register (``local``) and stored once. A thread reads 64 consecutive floats (256 bytes, two L1
  lines reused by the unrolled loop); a warp-ballot packing would coalesce better but TIR has no
  ballot intrinsic, and pack is a small share of the model's time next to the GEMMs.
* Popcount GEMM: the classic shared-memory tiled GEMM. A block of ``ty x tx`` threads owns a
  ``(ty*tm) x (tx*tn)`` output tile, each thread a ``tm x tn`` accumulator tile in registers; the
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

import tvm
from tvm import tirx

from .target_info import TargetLike, as_target

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


def schedule_pack_gpu(func: tirx.PrimFunc, target: TargetLike, *, threads: int = 128) -> tvm.IRModule:
    """One thread per packed word (``M * Kw`` threads), bit loop unrolled, word kept in a register."""
    threads = min(threads, _max_threads(target))
    sch = tvm.s_tir.Schedule(func)
    blk = sch.get_sblock(_PACK_BLOCK)
    i, w, b = sch.get_loops(blk)
    total = int(sch.get(i).extent) * int(sch.get(w).extent)
    bx, tx = sch.split(sch.fuse(i, w), [None, min(threads, total)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.cache_write(blk, 0, "local")
    # cache_write puts the write-back after the loop nest; move it under the thread, after the bits.
    sch.reverse_compute_at(sch.get_sblock(_PACK_BLOCK + "_local"), tx)
    sch.unroll(b)
    sch.decompose_reduction(blk, b)
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
    out = 1
    while out * 2 <= min(extent, want):
        out *= 2
    return out


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
        cache = sch.cache_read(acc, idx, "shared")
        sch.compute_at(cache, ro, preserve_unit_loops=True)  # unit K (Kw = 1) keeps its loop
        sch.storage_align(cache, 0, axis=0, factor=2, offset=1)
        rows, words = sch.get_loops(cache)[5:]  # under bi, bj, ti, tj, ro
        _, fy, fx = sch.split(sch.fuse(rows, words), [None, ty, tx])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")
    for lp in sch.get_loops(out)[4:]:
        sch.unroll(lp)
    sch.decompose_reduction(acc, ro)
    for lp in sch.get_loops(acc)[-3:]:
        sch.unroll(lp)
    return sch.mod


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
    if "thread_binding" in text or _GPU_SCOPE.search(text):
        raise RuntimeError("serialize_threads: thread bindings or GPU scopes left after the rewrite")
    return tvm.script.from_source(text)


_THREAD_LOOP = re.compile(r'T\.thread_binding\(([^,()]+), thread="(?:blockIdx|threadIdx)\.[xyz]"\)')
_GPU_SCOPE = re.compile(r'scope="(?:shared|local)"')
