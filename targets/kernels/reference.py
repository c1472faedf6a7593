"""Plain numpy references for the packed-bit kernels.

These are the ground truth the TVM kernels are tested against, so they are written for obvious
correctness (numpy's own ``packbits``/``bitwise_count``), not speed. Convention: ``docs/packing.md``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

WORD_BITS = 64


def num_words(k: int) -> int:
    """Words per packed row of ``k`` bits (``ceil(k / 64)``)."""
    return (k + WORD_BITS - 1) // WORD_BITS


def pack_bits(x: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Sign-pack the last axis: bit = ``x < 0`` (so 0 and NaN are +1), uint64 words, zero padding.

    ``x`` is float ``[..., K]``; the result is ``[..., ceil(K/64)]`` uint64.
    """
    arr = np.asarray(x, dtype=np.float32)
    k = arr.shape[-1]
    kw = num_words(k)
    bits = np.zeros(arr.shape[:-1] + (kw * WORD_BITS,), dtype=np.uint8)
    bits[..., :k] = arr < 0  # NaN < 0 is False: NaN packs to +1, as the convention says.
    packed = np.packbits(bits, axis=-1, bitorder="little")  # [..., kw * 8] bytes
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: npt.ArrayLike, k: int) -> npt.NDArray[np.float32]:
    """Inverse of :func:`pack_bits` up to sign: ``[..., Kw]`` uint64 -> ``[..., k]`` of +-1.0."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.uint64)).astype("<u8", copy=False)
    if w.shape[-1] != num_words(k):
        raise ValueError(f"{w.shape[-1]} words cannot hold exactly {k} bits")
    bits = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return np.where(bits == 1, np.float32(-1.0), np.float32(1.0))


def popcount(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Per-element popcount (numpy 2 ``bitwise_count``, with a byte-table fallback for numpy 1)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (8,))
    return table[as_bytes].sum(-1)


def binary_gemm_ref(
    a_bits: npt.ArrayLike, w_bits: npt.ArrayLike, k: int
) -> npt.NDArray[np.int32]:
    """+-1 dot products of packed rows: ``[M,Kw] x [N,Kw] -> [M,N]`` int32 = ``K - 2 popc(a ^ w)``."""
    a = np.asarray(a_bits, dtype=np.uint64)
    w = np.asarray(w_bits, dtype=np.uint64)
    diff = popcount(a[:, None, :] ^ w[None, :, :]).sum(-1)
    return (k - 2 * diff).astype(np.int32)


def and_popcount_ref(m_bits: npt.ArrayLike, v_bits: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Mask counts: ``[M,Kw] x [N,Kw] -> [M,N]`` int32 = ``popc(m & v)``.

    With ``v`` = the packed ``v >= 0`` bits this gives the ``popcount(m AND vpos)`` term of the QD
    context (``docs/packing.md``).
    """
    m = np.asarray(m_bits, dtype=np.uint64)
    v = np.asarray(v_bits, dtype=np.uint64)
    return popcount(m[:, None, :] & v[None, :, :]).sum(-1).astype(np.int32)


def binary_linear_ref(
    a_bits: npt.ArrayLike,
    w_bits: npt.ArrayLike,
    k: int,
    scale: npt.ArrayLike,
    bias: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Float epilogue of the XNOR GEMM, in float64 so float32 kernels can be compared against it."""
    dots = binary_gemm_ref(a_bits, w_bits, k).astype(np.float64)
    return dots * np.asarray(scale, np.float64)[None, :] + np.asarray(bias, np.float64)[None, :]


def _signs(x: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """+-1 integers of a float array with the packing convention (``x < 0`` is -1; 0, NaN are +1)."""
    return np.where(np.asarray(x, dtype=np.float32) < 0, -1, 1).astype(np.int64)


def binary_conv2d_ref(
    x: npt.ArrayLike,
    shift: npt.ArrayLike,
    w_bits: npt.ArrayLike,
    kernel: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
    group: int = 1,
) -> npt.NDArray[np.int32]:
    """Integer ``BinaryConv2d`` before scale/bias: ``[B, O, Ho, Wo]`` int32.

    ``sign(x + shift)`` per channel (``shift`` broadcast as ``[C]``), **then** zero padding (ONNX
    pads ``[top, left, bottom, right]``), then a grouped, strided, dilated conv with the +-1 weights
    unpacked from ``w_bits [O, ceil(K/64)]`` in ``(c, i, j)`` order; one tap at a time, plain numpy.
    """
    xf = np.asarray(x, dtype=np.float32)
    b, c, _, _ = xf.shape
    kh, kw = kernel
    cg = c // group
    s = _signs(xf + np.asarray(shift, np.float32).reshape(1, c, 1, 1))
    sp = np.pad(s, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    words = np.asarray(w_bits, dtype=np.uint64)
    o = words.shape[0]
    og = o // group
    w = unpack_bits(words, cg * kh * kw).astype(np.int64).reshape(o, cg, kh, kw)
    ho = (sp.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (sp.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((b, o, ho, wo), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilations[0], j * dilations[1]
            tap = sp[:, :, y0 : y0 + (ho - 1) * strides[0] + 1 : strides[0], x0 : x0 + (wo - 1) * strides[1] + 1 : strides[1]]
            for g in range(group):
                out[:, g * og : (g + 1) * og] += np.einsum(
                    "bchw,oc->bohw", tap[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og, :, i, j]
                )
    return out.astype(np.int32)


def _heads(t: npt.NDArray[np.int64], h: int) -> npt.NDArray[np.int64]:
    """``[B, N, C] -> [B, h, N, C/h]``."""
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)


def attention_scores_ref(
    q: npt.ArrayLike, k: npt.ArrayLike, q_shift: npt.ArrayLike, k_shift: npt.ArrayLike, num_heads: int
) -> npt.NDArray[np.int32]:
    """Integer ``BinaryAttentionScores`` before ``/ scale``: ``sign(q+qs)_h . sign(k+ks)_h``, ``[B, h, N, N]``."""
    qh = _heads(_signs(np.asarray(q, np.float32) + np.asarray(q_shift, np.float32)), num_heads)
    kh = _heads(_signs(np.asarray(k, np.float32) + np.asarray(k_shift, np.float32)), num_heads)
    return np.matmul(qh, kh.transpose(0, 1, 3, 2)).astype(np.int32)


def qd_levels_ref(p: npt.ArrayLike, thresholds: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """QD levels ``L = sum_j [p >= t_hj]`` (0..3) of ``p [B, h, N, N]`` with ``thresholds [h, 3]``."""
    pf = np.asarray(p, np.float32)
    t = np.asarray(thresholds, np.float32)
    return sum((pf >= t[None, :, j, None, None]).astype(np.int64) for j in range(t.shape[1]))


def qd_context_ref(
    p: npt.ArrayLike, v: npt.ArrayLike, v_shift: npt.ArrayLike, thresholds: npt.ArrayLike, num_heads: int
) -> npt.NDArray[np.int32]:
    """Integer ``QDAttentionContext`` before ``* alpha``: ``L_h @ sign(v + vs)_h``, heads merged, ``[B, N, C]``."""
    vh = _heads(_signs(np.asarray(v, np.float32) + np.asarray(v_shift, np.float32)), num_heads)
    ctx = np.matmul(qd_levels_ref(p, thresholds), vh)  # [B, h, N, d]
    b, h, n, d = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(b, n, h * d).astype(np.int32)


def gsb_masks_ref(p: npt.ArrayLike, clip: float, rel: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """GSB's three masks ``[3, ...]`` (B, U, V) of ``p``, in float32 as the function body computes them.

    ``B = [q > 0.5]`` is ``clamp(round(q), 0, 1)`` (round half to even: 0.5 gives 0).
    """
    q = np.asarray(p, np.float32) / np.float32(clip)
    m = q.max(axis=-1, keepdims=True)
    r = np.asarray(rel, np.float32)
    return np.stack([q > np.float32(0.5), q > m * r[0], q > m * r[1]]).astype(np.uint8)


def gsb_context_ref(
    p: npt.ArrayLike, v: npt.ArrayLike, v_shift: npt.ArrayLike, clip: float, rel: npt.ArrayLike, num_heads: int
) -> npt.NDArray[np.int32]:
    """Integer ``GSBAttentionContext`` plane products ``[3, B, N, C]``: masks B, U, V of ``q = p / clip``
    (``q > 0.5``, ``q > rel_0 max q``, ``q > rel_1 max q``, float32) times ``sign(v + vs)_h``."""
    vh = _heads(_signs(np.asarray(v, np.float32) + np.asarray(v_shift, np.float32)), num_heads)
    masks = gsb_masks_ref(p, clip, rel).astype(np.int64)  # [3, B, h, N, N]
    ctx = np.matmul(masks, vh[None])  # [3, B, h, N, d]
    j, b, h, n, d = ctx.shape
    return ctx.transpose(0, 1, 3, 2, 4).reshape(j, b, n, h * d).astype(np.int32)
