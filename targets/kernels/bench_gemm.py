"""Throughput of the XNOR/popcount GEMM on the host, in binary multiply-accumulates per second.

One binary MAC is one +-1 product-and-add, i.e. one bit of one ``(i, j)`` dot product, so a GEMM
does ``M * N * K`` of them; this makes numbers comparable with float GEMM MAC/s (and with LCE's
published figures). Run ``python -m bhvit_export.targets.kernels.bench_gemm`` for the BHViT-Tiny stage-1 MLP shape.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np
import tvm

from bhvit_export.targets.threads import set_threads

from . import bgemm
from .build import build_kernel
from .reference import pack_bits
from .target_info import TargetLike, as_target, host_target, is_aarch64, runs_on_host

#: (M, N, K): 56x56 tokens of BHViT-Tiny's first stage, 128 -> 512 channels.
BHVIT_TINY_LAYER = (3136, 512, 128)


def gemm_throughput(
    m: int,
    n: int,
    k: int,
    target: Optional[TargetLike] = None,
    threads: int = 1,
    *,
    repeat: int = 5,
    min_repeat_ms: int = 200,
    **tiles: int,
) -> float:
    """Median binary MAC/s of the float-epilogue kernel for ``[M,K] x [N,K]`` on the host CPU.

    ``target`` (default: this CPU, :func:`host_target`) must run on this machine; ``tiles`` go to
    the schedule (``mr``/``nr``) for tuning sweeps.
    """
    target = host_target() if target is None else as_target(target)
    if is_aarch64(target):
        raise ValueError("aarch64 kernels can only be cross-compiled here, not timed")
    missing = runs_on_host(target)
    if missing:
        raise ValueError(f"this CPU lacks {', '.join(missing)}, which {target.attrs.get('mcpu')} code may use")
    set_threads(threads)
    lib = build_kernel(bgemm.bgemm_module(m, n, k, target, **tiles), target)
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = [
        tvm.runtime.tensor(pack_bits(rng.standard_normal((m, k))), dev),
        tvm.runtime.tensor(pack_bits(rng.standard_normal((n, k))), dev),
        tvm.runtime.tensor(rng.standard_normal(n).astype(np.float32), dev),
        tvm.runtime.tensor(rng.standard_normal(n).astype(np.float32), dev),
        tvm.runtime.tensor(np.zeros((m, n), np.float32), dev),
    ]
    timer = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    seconds = float(np.median(timer(*args).results))
    return m * n * k / seconds


def main() -> None:
    """Print one throughput line for the BHViT-Tiny layer shape (all CPUs unless --threads)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ns = parser.parse_args()
    m, n, k = BHVIT_TINY_LAYER
    target = host_target()
    macs = gemm_throughput(m, n, k, target, ns.threads)
    print(
        f"bgemm M={m} N={n} K={k} target=llvm -mcpu={target.attrs['mcpu']} (this CPU) threads={ns.threads}: "
        f"{macs / 1e9:.1f} G binary MAC/s ({m * n * k / macs * 1e3:.3f} ms)"
    )


if __name__ == "__main__":
    main()
