"""The kernel table: each binary GEMM/conv shape of a model, our throughput against the roofline.

* ours: the XNOR/popcount GEMM kernel (``targets/kernels/bgemm.py``) at that (M, N, K), binary MAC/s
  (one MAC = one +-1 product-and-add = one bit of one dot product); for the MLP expansions
  (``expand`` rows) the fused kernel of ``targets/kernels/expand_pack.py`` itself, epilogue
  (residual, RPReLU, sign-pack, channel means) included;
* roofline: a micro-benchmark of the same XOR + popcount + add inner loop on L1-resident data, no
  GEMM structure at all: the most binary MAC/s this CPU's popcount units give;
* onnxruntime fp32: a plain MatMul of the same shape, float MAC/s, the work binarization replaces.
Convolutions are listed as their im2col GEMM (M = output pixels, N = output channels per group,
K = in_features), times the group count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Shape:
    op: str
    m: int
    n: int
    k: int
    groups: int = 1
    ratio: int = 0  # the MLP expansion ratio of an ``expand`` row
    count: int = 1  # how many layers of the model have this shape

    @property
    def label(self) -> str:
        g = f" x{self.groups}g" if self.groups > 1 else ""
        return f"{self.op} {self.m}x{self.n}x{self.k}{g}"


def binary_shapes(fused: onnx.ModelProto) -> list[Shape]:
    """(op, M, N, K) of every binary linear, MLP expansion and conv at batch 1, deduplicated with counts."""
    from bhvit_export.targets.importer import prepare

    static = prepare(fused, batch=1)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(static.graph.value_info) + list(static.graph.input) + list(static.graph.output)
    }
    seen: dict[tuple, int] = {}
    for node in static.graph.node:
        if node.domain != "bhvit" or node.op_type not in ("BinaryLinear", "PackedBinaryLinear", "BinaryExpandPack", "BinaryConv2d"):
            continue
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k = int(attrs.get("in_features", x[-1] if x else 0))
        if node.op_type in ("BinaryLinear", "PackedBinaryLinear"):
            key = ("linear", int(np.prod(x[:-1])), int(y[-1]), k, 1, 0)
        elif node.op_type == "BinaryExpandPack":
            ratio = int(attrs["ratio"])
            key = ("expand", int(np.prod(x[:-1])), k * ratio, k, 1, ratio)
        else:
            g = int(attrs.get("group", 1))
            key = ("conv", int(y[2] * y[3]), int(y[1]) // g, k, g, 0)
        seen[key] = seen.get(key, 0) + 1
    return [Shape(*key, count=c) for key, c in seen.items()]


def roofline(threads: int) -> float:
    """Peak binary MAC/s of XOR + popcount + add on cache-resident words (all vector lanes busy)."""
    import tvm
    from tvm import te, tirx

    from bhvit_export.targets.kernels.target_info import host_target, u64_lanes

    target = host_target()
    lanes = u64_lanes(target)
    # 1 MiB per thread: L2-resident (L2 feeds a vector per cycle), and enough work per call (~8 us)
    # that the call overhead of time_evaluator is a few percent; 16 KiB made it the bottleneck.
    rows, cols = 1024, 128 * threads
    a = te.placeholder((rows, cols), "uint64", name="a")
    c = te.placeholder((cols,), "uint64", name="c")
    r = te.reduce_axis((0, rows), name="r")
    out = te.compute((cols,), lambda j: te.sum(tirx.popcount(a[r, j] ^ c[j]), axis=r), name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, c, out]))
    blk = sch.get_sblock("out")
    j, rr = sch.get_loops(blk)
    jo, ji = sch.split(j, [None, lanes * 4])
    jv_o, jv = sch.split(ji, [None, lanes])
    sch.reorder(jo, rr, jv_o, jv)
    sch.vectorize(jv)
    sch.unroll(jv_o)
    sch.parallel(jo)
    lib = tvm.compile(sch.mod, target=target).mod
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.integers(0, 2**63, (rows, cols), dtype=np.uint64), dev),
        tvm.runtime.tensor(rng.integers(0, 2**63, (cols,), dtype=np.uint64), dev),
        tvm.runtime.tensor(np.zeros(cols, np.uint64), dev),
    ]
    t = lib.time_evaluator("main", dev, number=200, repeat=5)(*args)
    return rows * cols * 64 / float(np.min(t.results))


def ort_matmul(m: int, n: int, k: int, threads: int) -> float:
    """Float MAC/s of onnxruntime's MatMul [M,K] x [K,N] (weights constant, as in a model)."""
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[w],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        best = min(best, time.perf_counter() - t)
    return m * n * k / best


def expand_throughput(m: int, n: int, k: int, ratio: int, threads: int) -> float:
    """Median binary MAC/s of the fused MLP-expansion kernel (GEMM + epilogue) at ``M x N x K``."""
    import tvm

    from bhvit_export.targets.kernels.build import build_kernel
    from bhvit_export.targets.kernels.expand_pack import make_expand_pack
    from bhvit_export.targets.kernels.reference import num_words
    from bhvit_export.targets.kernels.target_info import host_target
    from bhvit_export.targets.threads import set_threads

    set_threads(threads)
    lib = build_kernel(make_expand_pack(m, n, k, ratio), host_target())
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    kw = num_words(k)
    arrays = [
        rng.integers(0, 2**63, (m, kw), dtype=np.uint64),
        rng.standard_normal((m, k)).astype(np.float32),
        rng.integers(0, 2**63, (kw, n), dtype=np.uint64),
        *(rng.standard_normal(n).astype(np.float32) for _ in range(6)),
        np.zeros((m, n // 64), np.uint64),
        np.zeros((m, k), np.float32),
    ]
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    timer = lib.time_evaluator("main", dev, number=1, repeat=3, min_repeat_ms=50)
    return m * n * k / float(np.median(timer(*args).results))


def kernel_table(fused: onnx.ModelProto, threads: int, say: Progress) -> dict[str, Any]:
    """Rows for every binary shape of ``fused`` plus the roofline, as JSON-able data."""
    from bhvit_export.targets.kernels.bench_gemm import gemm_throughput
    from bhvit_export.targets.kernels.target_info import host_target

    say(f"kernels: measuring the popcount roofline ({threads} threads)")
    peak = roofline(threads)
    rows = []
    for s in binary_shapes(fused):
        say(f"kernels: {s.label}")
        if s.op == "expand":
            ours = expand_throughput(s.m, s.n, s.k, s.ratio, threads)
        else:
            ours = gemm_throughput(s.m, s.n, s.k, host_target(), threads, repeat=3, min_repeat_ms=50)
        fp = ort_matmul(s.m, s.n, s.k, threads)
        rows.append(
            {
                "op": s.op, "m": s.m, "n": s.n, "k": s.k, "groups": s.groups, "layers": s.count,
                "ours_gmacs": ours / 1e9, "roofline_fraction": ours / peak, "ort_fp32_gmacs": fp / 1e9,
                "speedup_vs_fp32": ours / fp,
            }
        )
    return {"threads": threads, "roofline_gmacs": peak / 1e9, "rows": rows}


def format_kernel_table(t: dict[str, Any]) -> str:
    head = f"{'shape (op MxNxK)':<30}{'layers':>7}{'ours G bMAC/s':>15}{'of roofline':>13}{'ort fp32 G MAC/s':>18}{'x fp32':>8}"
    lines = [f"popcount roofline: {t['roofline_gmacs']:.0f} G binary MAC/s on {t['threads']} thread(s)", head, "-" * len(head)]
    for r in t["rows"]:
        g = f" x{r['groups']}g" if r["groups"] > 1 else ""
        label = f"{r['op']} {r['m']}x{r['n']}x{r['k']}{g}"
        lines.append(
            f"{label:<30}{r['layers']:>7}{r['ours_gmacs']:>15.0f}{r['roofline_fraction']:>12.0%}"
            f"{r['ort_fp32_gmacs']:>18.1f}{r['speedup_vs_fp32']:>7.1f}x"
        )
    return "\n".join(lines)

