"""The ``bhvit`` op domain: fused packed-bit ops and their ONNX function bodies.

(Each op's named inputs, attributes and cost are its entry in :mod:`bhvit_export.passes.op_schema`, which
holds these bodies.)

Each op's function body states its exact semantics in standard ONNX ops (opset 18: BitShift and
BitwiseAnd unpack the uint64 words), so onnxruntime and Netron run and show a fused model unchanged,
and the function body is the executable spec that the TVM kernels are tested against. The bit
convention is in ``docs/packing.md``: bit 1 means -1, ``sign(0) = +1``, uint64 words, little-endian
bit order, zero padding bits.
"""

from __future__ import annotations

import numpy as np
import onnx

DOMAIN = "bhvit"
DOMAIN_VERSION = 1
ONNX_OPSET = 18
WORD = 64

_HEADER = f'<domain: "{DOMAIN}", opset_import: ["" : {ONNX_OPSET}]>'
_SHIFTS = "{" + ",".join(str(i) for i in range(WORD)) + "}"

# Shared fragments: +-1 from a float (bit = x < 0), and +-1 rows unpacked from uint64 words.
_SIGN = """
   {out}_z = Constant <value_float = 0.0> ()
   {out}_neg = Less({x}, {out}_z)
   {out}_m1 = Constant <value_float = -1.0> ()
   {out}_p1 = Constant <value_float = 1.0> ()
   {out} = Where({out}_neg, {out}_m1, {out}_p1)
"""


def _sign(out: str, x: str) -> str:
    return _SIGN.replace("{out}", out).replace("{x}", x)


_UNPACK = f"""
   u_ax = Constant <value_ints = [-1]> ()
   u_w3 = Unsqueeze(w_bits, u_ax)
   u_sh = Constant <value = uint64[{WORD}] {_SHIFTS}> ()
   u_bits = BitShift <direction = "RIGHT"> (u_w3, u_sh)
   u_one = Constant <value = uint64[1] {{1}}> ()
   u_b = BitwiseAnd(u_bits, u_one)
   u_shp = Constant <value_ints = [0, -1]> ()
   u_flat = Reshape(u_b, u_shp)
   u_k = Constant <value_int: int = @in_features> ()
   u_zax = Constant <value_ints = [0]> ()
   u_k1 = Unsqueeze(u_k, u_zax)
   u_st = Constant <value_ints = [0]> ()
   u_a1 = Constant <value_ints = [1]> ()
   u_kb = Slice(u_flat, u_st, u_k1, u_a1)
   u_kf = Cast <to = 1> (u_kb)
   u_m2 = Constant <value_float = -2.0> ()
   u_t = Mul(u_kf, u_m2)
   u_p1 = Constant <value_float = 1.0> ()
   w_pm = Add(u_t, u_p1)
"""

# ``{out} = (a @ w_pm^T) * scale + bias``: the binary linear on +-1 ``a`` and unpacked weights.
_LINEAR = """
   wt = Transpose(w_pm)
   d = MatMul(a, wt)
   ds = Mul(d, scale)
   {out} = Add(ds, bias)
"""


def _linear(out: str) -> str:
    return _LINEAR.replace("{out}", out)


# The reshape target ``[B, N, h, -1]`` that splits channels into heads (``zax`` is reused after it).
_HEADS_SHAPE = """
   h = Constant <value_int: int = @num_heads> ()
   zax = Constant <value_ints = [0]> ()
   h1 = Unsqueeze(h, zax)
   lead = Constant <value_ints = [0, 0]> ()
   rest = Constant <value_ints = [-1]> ()
   shp = Concat <axis = 0> (lead, h1, rest)
"""

BINARY_LINEAR = (
    _HEADER
    + """
BinaryLinear <in_features> (x, shift, w_bits, scale, bias) => (y) {
   xs = Add(x, shift)
"""
    + _sign("a", "xs")
    + _UNPACK
    + _linear("y")
    + """}
"""
)

BINARY_CONV2D = (
    _HEADER
    + """
BinaryConv2d <kernel_shape, strides, pads, dilations, group, in_features> (x, shift, w_bits, scale, bias) => (y) {
   xs = Add(x, shift)
"""
    + _sign("a", "xs")
    + _UNPACK
    + """
   lead = Constant <value_ints = [0, -1]> ()
   ks = Constant <value_ints: ints = @kernel_shape> ()
   wshape = Concat <axis = 0> (lead, ks)
   w4 = Reshape(w_pm, wshape)
   c = Conv <strides: ints = @strides, pads: ints = @pads, dilations: ints = @dilations, group: int = @group> (a, w4)
   hw = Constant <value_ints = [1, 2]> ()
   s3 = Unsqueeze(scale, hw)
   b3 = Unsqueeze(bias, hw)
   cs = Mul(c, s3)
   y = Add(cs, b3)
}
"""
)

BINARY_ATTENTION_SCORES = (
    _HEADER
    + """
BinaryAttentionScores <num_heads, scale> (q, k, q_shift, k_shift) => (scores) {
   qs = Add(q, q_shift)
   ks = Add(k, k_shift)
"""
    + _sign("qb", "qs")
    + _sign("kb", "ks")
    + _HEADS_SHAPE
    + """
   q4 = Reshape(qb, shp)
   k4 = Reshape(kb, shp)
   qh = Transpose <perm = [0, 2, 1, 3]> (q4)
   kt = Transpose <perm = [0, 2, 3, 1]> (k4)
   dot = MatMul(qh, kt)
   sc = Constant <value_float: float = @scale> ()
   scores = Div(dot, sc)
}
"""
)

# Both attention-context bodies: ``vh = heads(sign(v + v_shift))`` [B, h, N, d] first, and the
# ``pa`` [B, h, N, d] -> ``ctx`` [B, N, C] head merge last.
_V_HEADS = (
    """
   vs = Add(v, v_shift)
"""
    + _sign("vb", "vs")
    + _HEADS_SHAPE
    + """
   v4 = Reshape(vb, shp)
   vh = Transpose <perm = [0, 2, 1, 3]> (v4)"""
)
_MERGE_HEADS = """
   pt = Transpose <perm = [0, 2, 1, 3]> (pa)
   oshp = Constant <value_ints = [0, 0, -1]> ()
   ctx = Reshape(pt, oshp)
}
"""

QD_ATTENTION_CONTEXT = (
    _HEADER
    + """
QDAttentionContext <num_heads> (p, v, v_shift, thresholds, alpha) => (ctx) {"""
    + _V_HEADS
    + """
   tt = Transpose <perm = [1, 0]> (thresholds)
   tax = Constant <value_ints = [1, 3, 4]> ()
   t5 = Unsqueeze(tt, tax)
   p5 = Unsqueeze(p, zax)
   ge = GreaterOrEqual(p5, t5)
   gf = Cast <to = 1> (ge)
   lv = ReduceSum <keepdims = 0> (gf, zax)
   pv = MatMul(lv, vh)
   aax = Constant <value_ints = [0, 2, 3]> ()
   a4 = Unsqueeze(alpha, aax)
   pa = Mul(pv, a4)
"""
    + _MERGE_HEADS
)

# GSB (spec step 6b): q = p / clip, m = rowmax(q); masks B = [q > 0.5] (= clamp(round(q), 0, 1),
# round half to even), U = [q > rel_0 m], V = [q > rel_1 m]; each mask times sign(v) is one binary
# product, and ctx = w_B (B @ s) + w_U (U @ s) + w_V (V @ s) (w = a, a (a2 - 1), a (a3 - a2)).
GSB_ATTENTION_CONTEXT = (
    _HEADER
    + """
GSBAttentionContext <num_heads> (p, v, v_shift, clip, rel, weights) => (ctx) {"""
    + _V_HEADS
    + """
   q = Div(p, clip)
   mx_ax = Constant <value_ints = [-1]> ()
   m = ReduceMax <keepdims = 1> (q, mx_ax)
   half = Constant <value_float = 0.5> ()
   i0 = Constant <value_int = 0> ()
   i1 = Constant <value_int = 1> ()
   r_u = Gather(rel, i0)
   r_v = Gather(rel, i1)
   t_u = Mul(m, r_u)
   t_v = Mul(m, r_v)
   gb = Greater(q, half)
   gu = Greater(q, t_u)
   gv = Greater(q, t_v)
   fb = Cast <to = 1> (gb)
   fu = Cast <to = 1> (gu)
   fv = Cast <to = 1> (gv)
   eb = Unsqueeze(fb, zax)
   eu = Unsqueeze(fu, zax)
   ev = Unsqueeze(fv, zax)
   masks = Concat <axis = 0> (eb, eu, ev)
   pv = MatMul(masks, vh)
   w_shp = Constant <value_ints = [3, 1, 1, 1, 1]> ()
   w5 = Reshape(weights, w_shp)
   pw = Mul(pv, w5)
   pa = ReduceSum <keepdims = 0> (pw, zax)
"""
    + _MERGE_HEADS
)

# ``x [..., C] -> [..., ratio * C]``: C-vector repeated ``ratio`` times (``Concat([x] * ratio, -1)``).
_REPEAT = """
   r_r = Constant <value_int: int = @ratio> ()
   r_z = Constant <value_ints = [0]> ()
   r_r1 = Unsqueeze(r_r, r_z)
   r_one = Constant <value_ints = [1]> ()
   r_rs = Concat <axis = 0> (r_r1, r_one)
   r_ones = ConstantOfShape <value = float[1] {1.0}> (r_rs)
   r_m2 = Constant <value_ints = [-2]> ()
   r_x2 = Unsqueeze(x, r_m2)
   r_xr = Mul(r_x2, r_ones)
   r_lead = Shape <end = -1> (x)
   r_m1 = Constant <value_ints = [-1]> ()
   r_shp = Concat <axis = 0> (r_lead, r_m1)
   res = Reshape(r_xr, r_shp)
"""

BINARY_EXPAND_PACK = (
    _HEADER
    + """
BinaryExpandPack <in_features, ratio> (x, shift, w_bits, scale, bias, rp_shift, rp_slope, rp_bias, next_shift) => (bits, pooled) {
   xs = Add(x, shift)
"""
    + _sign("a", "xs")
    + _UNPACK
    + _REPEAT
    + _linear("y")
    + """
   v = Add(y, res)
   vs = Sub(v, rp_shift)
   pr = PRelu(vs, rp_slope)
   h = Add(pr, rp_bias)
   p_c = Shape <start = -1> (x)
   p_shp = Concat <axis = 0> (r_lead, p_c, r_r1)
   p_h = Reshape(h, p_shp)
   pooled = ReduceMean <keepdims = 0> (p_h, r_m1)
   hs = Add(h, next_shift)
   b_z = Constant <value_float = 0.0> ()
   b_neg = Less(hs, b_z)
   b_u = Cast <to = 13> (b_neg)
   b_w = Constant <value_ints = [-1, 4, 16]> ()
   b_shp = Concat <axis = 0> (r_lead, b_w)
   b_u4 = Reshape(b_u, b_shp)
   b_sh = Constant <value = uint64[16] {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}> ()
   b_bit = BitShift <direction = "LEFT"> (b_u4, b_sh)
   b_i = Cast <to = 7> (b_bit)
   b_sum = ReduceSum <keepdims = 0> (b_i, r_m1)
   b_q = Cast <to = 13> (b_sum)
   b_qsh = Constant <value = uint64[4] {0,16,32,48}> ()
   b_qs = BitShift <direction = "LEFT"> (b_q, b_qsh)
   b_i0 = Constant <value_int = 0> ()
   b_i1 = Constant <value_int = 1> ()
   b_i2 = Constant <value_int = 2> ()
   b_i3 = Constant <value_int = 3> ()
   b_q0 = Gather <axis = -1> (b_qs, b_i0)
   b_q1 = Gather <axis = -1> (b_qs, b_i1)
   b_q2 = Gather <axis = -1> (b_qs, b_i2)
   b_q3 = Gather <axis = -1> (b_qs, b_i3)
   b_o1 = BitwiseOr(b_q0, b_q1)
   b_o2 = BitwiseOr(b_q2, b_q3)
   bits = BitwiseOr(b_o1, b_o2)
}
"""
)

# (BINARY_EXPAND_PACK packs in 16-bit quarters: onnxruntime's int64 ReduceSum loses the low bits of
# sums above 2^53, so a whole word cannot be summed from its 64 shifted bits.)

# The packed activation words ``x_bits [..., Kw]`` as +-1 ``a [..., K]`` (the inverse of the sign-pack).
# (PackedBinaryLinear reshapes its result to ``x_bits``'s leading dims: shape inference cannot see
# through the Slice to K, and the census needs static shapes.)
_UNPACK_X = f"""
   x_ax = Constant <value_ints = [-1]> ()
   x_w3 = Unsqueeze(x_bits, x_ax)
   x_sh = Constant <value = uint64[{WORD}] {_SHIFTS}> ()
   x_bt = BitShift <direction = "RIGHT"> (x_w3, x_sh)
   x_one = Constant <value = uint64[1] {{1}}> ()
   x_b = BitwiseAnd(x_bt, x_one)
   x_lead = Shape <end = -1> (x_bits)
   x_shp = Concat <axis = 0> (x_lead, x_ax)
   x_flat = Reshape(x_b, x_shp)
   x_k = Constant <value_int: int = @in_features> ()
   x_zax = Constant <value_ints = [0]> ()
   x_k1 = Unsqueeze(x_k, x_zax)
   x_kb = Slice(x_flat, x_zax, x_k1, x_ax)
   x_kf = Cast <to = 1> (x_kb)
   x_m2 = Constant <value_float = -2.0> ()
   x_t = Mul(x_kf, x_m2)
   x_p1 = Constant <value_float = 1.0> ()
   a = Add(x_t, x_p1)
"""

PACKED_BINARY_LINEAR = (
    _HEADER
    + """
PackedBinaryLinear <in_features> (x_bits, w_bits, scale, bias) => (y) {
"""
    + _UNPACK_X
    + _UNPACK
    + _linear("yb")
    + """
   y_n = Shape(scale)
   y_shp = Concat <axis = 0> (x_lead, y_n)
   y = Reshape(yb, y_shp)
}
"""
)

def function_protos(used: set[str] | None = None) -> list[onnx.FunctionProto]:
    """Parsed function bodies (of the ops in ``used``, or all): see :func:`bhvit_export.passes.op_schema.function_protos`."""
    from .op_schema import function_protos as protos

    return protos(used)


def pack_bits(values: np.ndarray) -> np.ndarray:
    """Pack the last axis of a float array: bit = value < 0, uint64 words, little-endian bits."""
    values = np.asarray(values)
    k = values.shape[-1]
    kw = -(-k // WORD)
    bits = np.zeros(values.shape[:-1] + (kw * WORD,), dtype=np.uint8)
    bits[..., :k] = values < 0
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").reshape(values.shape[:-1] + (kw,))


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: +-1 float32 of length ``k`` on the last axis."""
    words = np.ascontiguousarray(words, dtype="<u8")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return (1.0 - 2.0 * bits).astype(np.float32)


def qd_thresholds(alpha: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Per-head thresholds ``t_hj`` on softmax probabilities for the three QD masks ``L >= j``.

    The official level is ``clamp(round(3p/alpha + zp), 0, 3)`` with round-half-to-even, so
    ``L >= j`` iff ``3p/alpha + zp > j - 0.5`` (odd j) or ``>= j - 0.5`` (even j, the tie rounds
    up). For alpha > 0 that is ``p >= t_j`` with ``t_j = alpha (j - 0.5 - zp) / 3``, moved one ulp
    up for odd j to make the compare strict.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    zp = np.asarray(zero_point, dtype=np.float64)
    t = np.stack([alpha * (j - 0.5 - zp) / 3.0 for j in (1, 2, 3)], axis=-1).astype(np.float32)
    t[:, 0::2] = np.nextafter(t[:, 0::2], np.float32(np.inf))
    return t

