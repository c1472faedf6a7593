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
