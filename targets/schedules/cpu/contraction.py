"""Two-operand contractions: matmul / dense / batch matmul and direct NCHW convolutions.

One register-tiled schedule serves both, because after legalisation both are a block
``C[s...] += A[...] * B[...]`` with spatial and reduction iterators:

* the *vector axis* ``j`` is the spatial iterator of the output's innermost (contiguous)
  dimension: N of a matmul, the output column of a convolution;
* the *register axis* ``i`` is a spatial iterator the operand indexed by ``j`` does not use, so one
  vector load of that operand is reused ``i_tile`` times: M of a matmul, the output channel of a
  convolution (the other operand, broadcast, is a scalar load per ``i``);
* an ``i_tile x j_tile`` accumulator lives in a local cache (``cache_write``) that stays in vector
  registers across the reduction loops and is written back once, with the epilogue (bias, scale,
  activation) inlined into the write-back;
* the remaining spatial loops and the tile loops are fused into one parallel loop.
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir
from tvm.target import Target

from bhvit_export.targets.arch import arch_of

from .common import (
    PARALLEL_MIN_WORK,
    SafeRule,
    best_divisor,
    block_infos,
    extent,
    f32_lanes,
    inline_spatial,
    schedule_spatial,
    vars_in,
    work,
)



def _region_vars(region) -> set[str]:
    return vars_in([r.min for r in region.region])


def _size(region) -> int:
    """Elements of the buffer a read region belongs to (0 if its shape is symbolic)."""
    total = 1
    for d in region.source.shape:
        if not hasattr(d, "value"):
            return 0
        total *= int(d.value)
    return total


class Contraction(SafeRule):
    """Register-tiled, vectorised, parallel schedule for matmuls and direct convolutions."""

    name = "contraction"

    def schedule(self, sch: s_tir.Schedule, target: Target) -> Optional[s_tir.Schedule]:
        infos = block_infos(sch)
        if not infos:
            return None
        reductions = [b for b in infos if not b.is_injective()]
        if len(reductions) != 1:
            return None
        main = reductions[0]
        kinds = main.dom_kind()
        if "O" in kinds or kinds.count("S") < 1 or not kinds.endswith("R"):
            return None
        stmt = sch.get(main.block_rv)
        out_buf = stmt.writes[0].source
        operands = [r for r in stmt.reads if not r.source.same_as(out_buf)]
        if len(operands) != 2 or len(stmt.writes) != 1:
            return None
        iter_vars = [iv.var.name for iv in stmt.iter_vars]
        s_vars = [v for v, k in zip(iter_vars, kinds) if k == "S"]
        # j: the spatial iterator of the output's last dimension.
        last = vars_in([stmt.writes[0].region[-1].min])
        j_cands = [v for v in s_vars if v in last]
        if len(j_cands) != 1:
            return None
        j_var = j_cands[0]
        vec_ops = [op for op in operands if j_var in _region_vars(op)]
        if len(vec_ops) != 1:
            return None
        vec_used = _region_vars(vec_ops[0])
        lanes = f32_lanes(target)
        loops = sch.get_loops(main.block_rv)
        by_var = dict(zip(iter_vars, loops))
        exts = {v: extent(sch, by_var[v]) for v in iter_vars}
        if any(e is None for e in exts.values()):
            return None
        i_cands = [v for v in s_vars if v != j_var and v not in vec_used and exts[v] > 1]
        if not i_cands:
            # Grouped convolution: the output channel also picks the input group (``ff // opg``);
            # tiling it still reuses each vector load within a group.
            other_used = set().union(*(_region_vars(op) for op in operands if op is not vec_ops[0]))
            i_cands = [v for v in s_vars if v != j_var and v in other_used and exts[v] > 1]
        if not i_cands and len(s_vars) > 1:
            return None
        # No row iterator at all: a GEMV ``y[j] = sum_k x[k] W[k, j]`` (the classifier at batch 1).
        # Rows of W stream through vector accumulators of j (a reduction-parallel schedule would
        # read W down its columns: 2 MB at a 4 KB stride).
        i_var = i_cands[-1] if i_cands else None
        if i_var is None and j_var not in vars_in([vec_ops[0].region[-1].min]):
            return None  # W[j, k] (k contiguous): dlight's GEMV rule reduces along rows instead
        # Everything but the contraction itself: inline what can be inlined (padding stays a
        # separate copy: inlined, its if_then_else would scalarise the vector loop).
        others = inline_spatial(sch, [b for b in infos if b is not main])
        # Stream the larger operand once: its tile loop goes outermost, so the smaller one is what
        # gets re-read (from cache). BHViT's last downsampling is 49x1024 @ 1024x512: with the row
        # tiles outside, the 2 MB weight was re-read from L3 for each of the 7 row tiles.
        vec_first = _size(vec_ops[0]) > max((_size(op) for op in operands if op is not vec_ops[0]), default=0)
        self._tile(sch, main.block_rv, iter_vars, kinds, i_var, j_var, exts, lanes, arch_of(target).float_rows, vec_first)
        for info in others:
            try:
                sch.get(info.block_rv)
            except Exception:  # noqa: BLE001 - folded into the accumulator write-back
                continue
            schedule_spatial(sch, info.block_rv, lanes)
        return sch

    @staticmethod
    def _tile(sch, block, iter_vars, kinds, i_var, j_var, exts, lanes, rows, vec_first=False) -> None:
        """Split, reorder, cache the accumulator, vectorise and parallelise the main block."""
        big = work(sch, block) >= PARALLEL_MIN_WORK
        loops = dict(zip(iter_vars, sch.get_loops(block)))
        j_ext = exts[j_var]
        j_tile = best_divisor(j_ext, 2 * lanes)
        if i_var is None and j_tile % (lanes // 2):
            j_tile = next((d for d in range(2 * lanes, 0, -(lanes // 2)) if j_ext % d == 0), j_tile)
        if j_tile < lanes // 2 and j_ext > 2 * lanes:
            j_tile = lanes  # no good divisor: accept a predicated tail rather than scalar tiles
        j_o, j_i = sch.split(loops[j_var], factors=[None, j_tile])
        other_s = [loops[v] for v, k in zip(iter_vars, kinds) if k == "S" and v not in (i_var, j_var)]
        r_loops = [loops[v] for v, k in zip(iter_vars, kinds) if k == "R"]
        if i_var is None:
            tiles, inner = [j_o], [j_i]
        else:
            i_ext = exts[i_var]
            i_tile = best_divisor(i_ext, rows)
            if i_tile < rows // 2 and i_ext > rows:
                # No good divisor (BHViT's attention: 53 = 49 window + 4 pooled tokens, a prime): a
                # predicated last row tile (a per-row condition, uniform over the vector lanes) keeps
                # the register tile; one-row tiles reload the vector operand for every row.
                i_tile = rows
            i_o, i_i = sch.split(loops[i_var], factors=[None, i_tile])
            tiles, inner = ([j_o, i_o] if vec_first else [i_o, j_o]), [i_i, j_i]
        sch.reorder(*other_s, *tiles, *r_loops, *inner)
        acc = sch.cache_write(block, 0, "local")
        # The epilogue reads the output once per element: fold it into the write-back.
        for consumer in sch.get_consumers(acc):
            try:
                sch.reverse_compute_inline(consumer)
            except Exception:  # noqa: BLE001 - a non-inlinable consumer stays its own stage
                pass
        sch.reverse_compute_at(acc, tiles[-1], preserve_unit_loops=True)
        # Annotate while the block still has its init (an update block alone has no compact
        # dataflow, and vectorize/parallel refuse it), then split the init off the reduction loops.
        if i_var is not None:
            sch.unroll(inner[0])
        sch.vectorize(j_i)
        sch.vectorize(sch.get_loops(acc)[-1])
        for r in r_loops[1:]:
            ext = extent(sch, r)
            if ext is not None and ext <= 4:
                sch.unroll(r)
        outer = sch.fuse(*other_s, *tiles)
        if big:
            sch.parallel(outer)
        init = sch.decompose_reduction(block, r_loops[0])
        sch.vectorize(sch.get_loops(init)[-1])
