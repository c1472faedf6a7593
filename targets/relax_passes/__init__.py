"""Relax-level rewrites run on the imported model before legalisation (see ``bhvit_export.targets.build._pipeline``).

They change the *graph* so that the float remainder legalises to contiguous, vectorisable loops
instead of gathers and scalar calls. All but ``fast_erf`` and ``fast_softmax`` keep the numbers (exact,
up to float summation order where a convolution becomes a matmul); those two are within 1e-6
(absolute for ``erf``, relative for ``exp``):

* :func:`~.token_layout.token_layout` - the image-layout (NCHW) islands between ``image`` and
  ``tokens`` (the token shift: slices, concats, adds) are computed in NHWC, which is the token
  layout reshaped, so the ``permute_dims`` pairs around them disappear;
* :func:`~.patch_conv.patch_conv_nhwc` (applied by the same pass) - convolutions with stride ==
  kernel and no padding (the patch stem and the downsampling layers) become space-to-depth +
  matmul, with their output in NHWC;
* :func:`~.roll_concat.roll_concat` - a circular roll (two slices and a concat: the token shifts)
  becomes a ``take`` with constant indices, which inlines into its consumer;
* :func:`~.repeat_concat.repeat_concat` - a concat of copies of one tensor (the expansion MLP's
  residual) becomes a broadcast;
* :func:`~.fast_erf.fast_erf` - ``erf`` (the stem's GELU) as a vectorisable rational approximation;
* :func:`~.fast_softmax.fast_softmax` - ``softmax`` with TVM's polynomial ``exp`` (vectorisable);
* :func:`~.reciprocal_divide.reciprocal_divide` - division by a constant as a multiply by its
  reciprocal (one more rounding: 2^-23 relative).
"""

from .fast_erf import fast_erf
from .fast_softmax import fast_softmax
from .patch_conv import patch_conv_nhwc, patch_geometry
from .reciprocal_divide import reciprocal_divide
from .repeat_concat import repeat_concat
from .roll_concat import roll_concat
from .token_layout import token_layout

__all__ = ["fast_erf", "fast_softmax", "patch_conv_nhwc", "patch_geometry", "reciprocal_divide", "repeat_concat", "roll_concat", "token_layout"]
