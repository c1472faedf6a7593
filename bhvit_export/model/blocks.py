"""BHViT blocks: the convolutional block (stages 1-2), the attention block (stages 3-4), downsampling.

Module names and nesting match the official state_dict keys exactly (``GC.cov1``,
``attention.attention.token_FA.norm``, ...), so ``load_state_dict(strict=True)`` is the key check.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WINDOW, BHViTConfig
from .layers import (
    FrozenMixin,
    LearnableBias,
    QuantizeConv2d,
    QuantizeLinear,
    RPReLU,
    channel_mix,
    dim,
    image,
    make_layerscale,
    make_norm,
    shift3,
    shift5,
    tokens,
)


class GC(nn.Module):
    """Token mixer of the convolutional block: three dilated grouped binary 3x3 convs."""

    def __init__(self, cfg: BHViTConfig, dim: int) -> None:
        super().__init__()
        self.move = LearnableBias(dim)
        for i, d in enumerate((1, 3, 5), start=1):
            setattr(self, f"cov{i}", QuantizeConv2d(dim, dim, 3, padding=d, dilation=d, groups=4, bias=True))
            setattr(self, f"act{i}", RPReLU(dim))
        self.norm = make_norm(cfg.norm, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = dim(x, 2), dim(x, 3)
        x = self.move(x)
        y = self.act1(tokens(self.cov1(x))) + self.act2(tokens(self.cov2(x))) + self.act3(tokens(self.cov3(x)))
        return image(self.norm(y), h, w)


class Intermediate(nn.Module):
    """``rprelu(norm(dense(x + move)) + concat([x] * ratio))``, dense C -> I binary."""

    def __init__(self, cfg: BHViTConfig, dim: int, inter: int) -> None:
        super().__init__()
        self.ratio = inter // dim
        self.move = nn.Parameter(torch.zeros(dim))
        self.dense = QuantizeLinear(dim, inter)
        self.norm = make_norm(cfg.norm, inter)
        self.rprelu = RPReLU(inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dense(x + self.move))
        return self.rprelu(y + torch.cat([x] * self.ratio, dim=-1))


class Output(nn.Module):
    """``layerscale(rprelu(norm(dense(x + move)) + avgpool_ratio(x)))``, dense I -> C binary."""

    def __init__(self, cfg: BHViTConfig, inter: int, dim: int) -> None:
        super().__init__()
        self.ratio = inter // dim
        self.move = nn.Parameter(torch.zeros(inter))
        self.dense = QuantizeLinear(inter, dim)
        self.norm = make_norm(cfg.norm, dim)
        self.rprelu = RPReLU(dim)
        self.layerscale = make_layerscale(cfg.layerscale, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dense(x + self.move))
        pooled = x.reshape(-1, dim(x, 1), dim(x, 2) // self.ratio, self.ratio).mean(dim=-1)
        return self.layerscale(self.rprelu(y + pooled))


class SelfOutput(nn.Module):
    """``attention.output``: ``layerscale(rprelu(norm(dense(x + move)) + x))``, dense C -> C."""

    def __init__(self, cfg: BHViTConfig, dim: int) -> None:
        super().__init__()
        self.move = nn.Parameter(torch.zeros(dim))
        self.dense = QuantizeLinear(dim, dim)
        self.norm = make_norm(cfg.norm, dim)
        self.rprelu = RPReLU(dim)
        self.layerscale = make_layerscale(cfg.layerscale, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layerscale(self.rprelu(self.norm(self.dense(x + self.move)) + x))


class TokenForAttention(nn.Module):
    """``token_FA``: pooled summary tokens ``a1*maxpool + (1-a1)*avgpool`` and the LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a1 = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-5)


class AttentionQuantizer(nn.Module):
    """``att_prob_quantizer``: QD, ``clamp(round(x / alpha + zp), 0, 3) * alpha`` per head."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(heads))
        self.zero_point = nn.Parameter(torch.zeros(heads))
        self.register_buffer("init_state", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.reshape(1, -1, 1, 1)
        z = self.zero_point.reshape(1, -1, 1, 1)
        return torch.clamp(torch.round(x / a + z), 0, 3) * a


class GSBQuantizer(FrozenMixin, nn.Module):
    """GSB (``--gsb``, spec step 6b): three masks of ``q = P / clip``, two relative to the row max.

    ``Pq = a * (B - U + a2 (U - V) + a3 V)`` with ``B = clamp(round(q), 0, 1)``, ``U = [q > 0.7 m]``,
    ``V = [q > 0.9 m]``, ``m = max_j q``. The clips are the parent attention's parameters
    (``att_prob_clip{,2,3}``); this module only keeps the official module path, so hooks and the
    fixtures' ``att_prob_quantizer`` intermediates line up. Its input is ``P`` (not ``3 P`` as QD's).
    """

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: no duplicate state_dict keys

    def derived(self) -> tuple[torch.Tensor, ...]:
        o = self._owner  # type: ignore[attr-defined]
        clip, a2, a3 = o.att_prob_clip, o.att_prob_clip2, o.att_prob_clip3
        return (clip.clone(), clip.clamp(min=1e-5), a2.clamp(min=1e-5), a3.clamp(min=1e-5))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        clip, a, a2, a3 = self.constants()
        q = p / clip
        m = q.amax(dim=-1, keepdim=True)
        b = torch.clamp(torch.round(q), 0, 1)
        u = (q > 0.7 * m).to(q.dtype)
        v = (q > 0.9 * m).to(q.dtype)
        return (b - u + (u - v) * a2 + v * a3) * a


class SelfAttention(nn.Module):
    """``attention.attention``: windowed binary attention with pooled global tokens and QD."""

    def __init__(self, cfg: BHViTConfig, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        for p in ("q", "k", "v"):
            setattr(self, f"move{p}", nn.Parameter(torch.zeros(dim)))
            setattr(self, f"move{p}2", nn.Parameter(torch.zeros(dim)))
        self.parm = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.token_FA = TokenForAttention(dim)
        self.query = QuantizeLinear(dim, dim)
        self.key = QuantizeLinear(dim, dim)
        self.value = QuantizeLinear(dim, dim)
        for p in ("q", "k", "v"):
            setattr(self, f"norm{p}", make_norm(cfg.norm, dim))
            setattr(self, f"rprelu{p}", RPReLU(dim))
        self.gsb = cfg.gsb
        if cfg.gsb:
            self.att_prob_clip = nn.Parameter(torch.tensor(1.0))
            self.att_prob_clip2 = nn.Parameter(torch.tensor(1.0))
            self.att_prob_clip3 = nn.Parameter(torch.tensor(1.0))
            self.att_prob_quantizer: nn.Module = GSBQuantizer(self)
        else:
            self.att_prob_quantizer = AttentionQuantizer(heads)
        self.norm_context = make_norm(cfg.norm, dim)
        self.rprelu_context = RPReLU(dim)

    def _project(self, z: torch.Tensor, p: str, dense: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        norm, act = getattr(self, f"norm{p}"), getattr(self, f"rprelu{p}")
        mixed = act(norm(dense(z + getattr(self, f"move{p}"))) + z)
        return mixed, torch.sign(mixed + getattr(self, f"move{p}2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = dim(x, 1), dim(x, 2), dim(x, 3)
        nh, nw = h // WINDOW, w // WINDOW
        n_win = nh * nw
        win = x.reshape(-1, c, nh, WINDOW, nw, WINDOW).permute(0, 2, 4, 3, 5, 1).reshape(-1, WINDOW * WINDOW, c)
        pad = WINDOW // 2
        mx = F.max_pool2d(x, WINDOW, WINDOW, pad)
        av = F.avg_pool2d(x, WINDOW, WINDOW, pad, count_include_pad=True)
        a1 = self.token_FA.a1
        pooled = a1 * tokens(mx) + (1 - a1) * tokens(av)  # (B, nM, C)
        n_m = dim(pooled, 1)
        pooled = pooled.unsqueeze(1).repeat(1, n_win, 1, 1).reshape(-1, n_m, c)
        z = self.token_FA.norm(torch.cat([win, pooled], dim=1))
        n_tok = dim(z, 1)

        mq, q = self._project(z, "q", self.query)
        mk, k = self._project(z, "k", self.key)
        mv, v = self._project(z, "v", self.value)
        d = c // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, n_tok, self.heads, d).permute(0, 2, 1, 3)

        scores = torch.matmul(heads(q), heads(k).transpose(-1, -2)) / math.sqrt(d)
        p = torch.softmax(scores, dim=-1)
        probs = self.att_prob_quantizer(p if self.gsb else p * 3)
        ctx = torch.matmul(probs, heads(v)).permute(0, 2, 1, 3).reshape(-1, n_tok, c)
        ctx = self.rprelu_context(self.norm_context(ctx) + mq + mk + mv)

        out_win = ctx[:, : WINDOW * WINDOW].reshape(-1, nh, nw, WINDOW, WINDOW, c)
        out_win = out_win.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)
        glob = ctx[:, WINDOW * WINDOW :].reshape(-1, n_win, nh, nw, c).mean(dim=1).permute(0, 3, 1, 2)
        up = F.interpolate(glob, scale_factor=float(WINDOW), mode="nearest")
        return out_win * self.parm + up * (1 - self.parm)


class Attention(nn.Module):
    """``attention``: self-attention then its output projection, on tokens."""

    def __init__(self, cfg: BHViTConfig, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg, dim, heads)
        self.output = SelfOutput(cfg, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(tokens(self.attention(x)))


class Block(nn.Module):
    """``layerA.i`` (``attention=False``, GC mixer) or ``layerB.i`` (windowed binary attention)."""

    def __init__(self, cfg: BHViTConfig, dim: int, inter: int, heads: int, attention: bool) -> None:
        super().__init__()
        self.is_attention = attention
        if attention:
            self.attention = Attention(cfg, dim, heads)
        else:
            self.GC = GC(cfg, dim)
        self.intermediate = Intermediate(cfg, dim, inter)
        self.output = Output(cfg, inter, dim)
        self.layernorm_before = make_norm(cfg.norm, dim)
        self.layernorm_after = make_norm(cfg.norm, dim)
        self.shifts: list[str] = (["h3", "w3", "ch3"] if cfg.shift3 else []) + (
            ["h5", "w5", "ch5"] if cfg.shift5 else []
        )
        # The official code builds the six shift-branch LayerScales whatever --disable-layerscale
        # says: that flag only drops output.layerscale and attention.output.layerscale.
        for s in self.shifts:
            setattr(self, f"layerscale_{s}", make_layerscale(True, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = dim(x, 2), dim(x, 3)
        t = tokens(x)
        n1 = self.layernorm_before(t)
        if self.is_attention:
            res = t + self.attention(image(n1, h, w))
        else:
            res = tokens(self.GC(image(n1, h, w)) + x)
        n2 = self.layernorm_after(res)
        out = self.output(self.intermediate(n2)) + res
        if self.shifts:
            img = image(n2, h, w)
            branch = {
                "h3": lambda: shift3(img, 2),
                "w3": lambda: shift3(img, 3),
                "ch3": lambda: channel_mix(img, 1),
                "h5": lambda: shift5(img, 2),
                "w5": lambda: shift5(img, 3),
                "ch5": lambda: channel_mix(img, 2),
            }
            for s in self.shifts:
                out = out + getattr(self, f"layerscale_{s}")(tokens(branch[s]()))
        return image(out, h, w)


class PatchEmbed(nn.Module):
    """``patch_embed1/2/3``: downsampling C -> 2C, full precision or binary."""

    def __init__(self, cfg: BHViTConfig, dim: int, res_out: int) -> None:
        super().__init__()
        self.binary = cfg.binary_downsample
        self.norm0 = make_norm(cfg.norm, dim)
        self.position_embeddings = nn.Parameter(torch.zeros(1, res_out * res_out, 2 * dim))
        self.norm = make_norm(cfg.norm, 2 * dim)
        if self.binary:
            self.move = nn.Parameter(torch.zeros(1, dim, 1, 1))
            self.proj = QuantizeConv2d(dim, 2 * dim, 2, stride=2, bias=False)
            self.rprelu = RPReLU(2 * dim)
        else:
            self.proj = nn.Conv2d(dim, 2 * dim, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = dim(x, 2), dim(x, 3)
        n = image(self.norm0(tokens(x)), h, w)
        if self.binary:
            r = tokens(F.avg_pool2d(n, 2, 2))
            y = self.norm(tokens(self.proj(n + self.move))) + torch.cat([r, r], dim=-1)
            y = self.rprelu(y) + self.position_embeddings
        else:
            y = self.norm(tokens(self.proj(n))) + self.position_embeddings
        return image(y, h // 2, w // 2)
