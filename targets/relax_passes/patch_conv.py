"""Patch convolutions (stride == kernel, no padding) as space-to-depth + one matmul.

The patch stem (4x4, stride 4) and the float downsampling layers (2x2, stride 2) legalise to
direct convolutions whose inner loops read the input with a stride: gathers. Their windows do not
overlap, so each output pixel is one row of a ``(B*Ho*Wo, kh*kw*C)`` matrix that a reshape and a
transpose build (contiguous runs of ``C`` from an NHWC input, of ``kw`` from NCHW), and the
convolution is a dense ``matmul`` with the weights rearranged once here, producing the output in
NHWC: the token layout, which is what the model reads next.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from tvm import relax

from .common import const_array, static_shape


def patch_geometry(call: relax.Call) -> Optional[tuple[int, int]]:
    """``(kh, kw)`` if ``call`` is a ``conv2d`` this rewrite handles (NCHW/OIHW, groups 1, no
    padding or dilation, stride == kernel, spatial size divisible, constant weights), else ``None``."""
    attrs = call.attrs
    w = const_array(call.args[1])
    x_shape = static_shape(call.args[0])
    if w is None or x_shape is None or w.ndim != 4 or len(x_shape) != 4:
        return None
    if (str(attrs.data_layout), str(attrs.kernel_layout)) != ("NCHW", "OIHW"):
        return None
    if str(attrs.out_layout) not in ("NCHW", ""):
        return None
    kh, kw = int(w.shape[2]), int(w.shape[3])
    strides = [int(s) for s in attrs.strides]
    padding = [int(p) for p in attrs.padding]
    dilation = [int(d) for d in attrs.dilation]
    if int(attrs.groups) != 1 or any(padding) or dilation != [1, 1] or strides != [kh, kw]:
        return None
    if x_shape[2] % kh or x_shape[3] % kw or w.shape[1] != x_shape[1]:
        return None
    return kh, kw


def patch_conv_nhwc(
    emit: Callable[[relax.Expr], relax.Var],
    call: relax.Call,
    x_nhwc: Optional[relax.Expr],
) -> relax.Var:
    """Emit the space-to-depth + matmul of the ``conv2d`` ``call`` and return its NHWC output.

    ``x_nhwc``: the input in NHWC (a token-layout twin), or ``None`` to read the NCHW input.
    ``call`` must pass :func:`patch_geometry`.
    """
    kh, kw = patch_geometry(call)  # type: ignore[misc]
    w = const_array(call.args[1])
    b, c, h, wd = static_shape(call.args[0])  # type: ignore[misc]
    o = int(w.shape[0])
    ho, wo = h // kh, wd // kw
    if x_nhwc is not None:
        x6 = emit(relax.op.reshape(x_nhwc, [b, ho, kh, wo, kw, c]))
        rows = emit(relax.op.permute_dims(x6, [0, 1, 3, 2, 4, 5]))
        wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
    else:
        x6 = emit(relax.op.reshape(call.args[0], [b, c, ho, kh, wo, kw]))
        rows = emit(relax.op.permute_dims(x6, [0, 2, 4, 1, 3, 5]))
        wm = w.reshape(o, c * kh * kw).T
    mat = emit(relax.op.reshape(rows, [b * ho * wo, c * kh * kw]))
    out = emit(relax.op.matmul(mat, relax.const(np.ascontiguousarray(wm, dtype=w.dtype), str(w.dtype))))
    return emit(relax.op.reshape(out, [b, ho, wo, o]))


__all__ = ["patch_conv_nhwc", "patch_geometry"]
