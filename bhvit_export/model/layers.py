"""The official BHViT building blocks, inference only, with the official parameter names.

Each class reproduces the forward of its namesake in the official code (IMRL/BHViT @ 4093f5bc) as
written down in ``shared/spec/bhvit-reference.md``. Binarized weights are computed from the stored
float weights in ``forward`` so that the ONNX exporter constant-folds them: the reference graph then
shows ``Sign`` on activations and ``+-s`` constants as weights, which is what the passes look for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """``s * sign(W - mean(W))`` per output channel, ``s = mean|W|`` of the uncentered weight."""
    dims = tuple(range(1, w.dim()))
    scale = w.abs().mean(dim=dims, keepdim=True)
    centered = w - w.mean(dim=dims, keepdim=True)
    return scale * torch.sign(centered)


class FrozenMixin:
    """Modules whose forward uses constants derived from their parameters.

    ``freeze()`` computes them once (inference weights never change), which also makes the ONNX
    exporter write them as initializers instead of re-deriving them in the graph.
    """

    _frozen: tuple[torch.Tensor, ...] | None = None

    def derived(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def constants(self) -> tuple[torch.Tensor, ...]:
        return self._frozen if self._frozen is not None else self.derived()

    def freeze(self) -> None:
        with torch.no_grad():
            self._frozen = tuple(t.detach().clone() for t in self.derived())


class QuantizeLinear(FrozenMixin, nn.Linear):
    """Binary linear: ``sign(x) @ (s * sign(R))^T`` (no bias in BHViT)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def derived(self) -> tuple[torch.Tensor, ...]:
        return (binarize_weight(self.weight),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.sign(x), self.constants()[0])


class QuantizeConv2d(FrozenMixin, nn.Conv2d):
    """Binary conv: zero padding enters *after* the sign (border taps contribute 0)."""

    def derived(self) -> tuple[torch.Tensor, ...]:
        return (binarize_weight(self.weight),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.constants()[0]
        return F.conv2d(torch.sign(x), w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormT(FrozenMixin, nn.BatchNorm1d):
    """Eval-mode batch norm over the last (channel) dim of tokens ``(B, N, C)``.

    Written ``(x - mean) * scale + bias`` (not ``x*a + b``): folding the mean into the shift moves
    the last bit, and sign flips downstream turn that into visible logit differences.
    """

    def derived(self) -> tuple[torch.Tensor, ...]:
        return (self.weight / torch.sqrt(self.running_var + self.eps),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean) * self.constants()[0] + self.bias


class _PReluLastDim(torch.autograd.Function):
    """PReLU with a per-channel slope on the *last* dim; exported as one ONNX ``PRelu``."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x >= 0, x, x * slope)

    @staticmethod
    def symbolic(g: object, x: object, slope: object) -> object:
        return g.op("PRelu", x, slope)  # type: ignore[attr-defined]


def make_norm(kind: str, dim: int, eps: float = BN_EPS) -> nn.Module:
    """The norm that ``--replace-ln-bn`` selects: BatchNormT, otherwise nn.LayerNorm."""
    return BatchNormT(dim, eps=eps) if kind == "batchnorm" else nn.LayerNorm(dim, eps=eps)


class RPReLU(nn.Module):
    """``prelu(x - move1) + move2``, per channel of the last dim."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.move1 = nn.Parameter(torch.zeros(dim))
        self.prelu = nn.PReLU(dim)
        self.move2 = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PReluLastDim.apply(x - self.move1, self.prelu.weight) + self.move2


class LayerScale(nn.Module):
    """``x * alpha + move`` on the last dim."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.move = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha + self.move


def make_layerscale(enabled: bool, dim: int) -> nn.Module:
    return LayerScale(dim) if enabled else nn.Identity()


class LearnableBias(nn.Module):
    """``x + bias`` with ``bias [1, C, 1, 1]`` (the GC block's ``move``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def dim(x: torch.Tensor, i: int) -> int:
    """A static (non-batch) size as a Python int, so traced graphs hold constants, not Shape ops."""
    return int(x.shape[i])


def tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``."""
    return x.reshape(-1, dim(x, 1), dim(x, 2) * dim(x, 3)).transpose(1, 2)


def image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``."""
    return x.transpose(1, 2).reshape(-1, dim(x, 2), h, w)


def roll(x: torch.Tensor, shift: int, axis: int) -> torch.Tensor:
    """Circular roll written as slices + concat (exports to plain ONNX Slice/Concat)."""
    n = dim(x, axis)
    s = shift % n
    if s == 0:
        return x
    return torch.cat([x.narrow(axis, n - s, s), x.narrow(axis, 0, n - s)], dim=axis)


def shift3(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``Shift``: mean of x and its +-1 circular rolls along ``axis``."""
    return (x + roll(x, 1, axis) + roll(x, -1, axis)) / 3


def shift5(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``Shift2``: mean of x and its +-1, +-2 circular rolls along ``axis``."""
    return (x + roll(x, 1, axis) + roll(x, -1, axis) + roll(x, 2, axis) + roll(x, -2, axis)) / 5


def channel_mix(x: torch.Tensor, s: int) -> torch.Tensor:
    """``Shift_channel_mix``: 4 channel chunks rolled +s/-s along H, then +s/-s along W."""
    c = dim(x, 1) // 4
    a, b, d, e = (x[:, i * c : (i + 1) * c] for i in range(4))
    return torch.cat([roll(a, s, 2), roll(b, -s, 2), roll(d, s, 3), roll(e, -s, 3)], dim=1)
