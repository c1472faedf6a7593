"""The whole BHViT classifier (``ViTForImageClassification`` of the official code), inference only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PATCH_SIZE, STEM_CHANNELS, BHViTConfig
from .blocks import Block, PatchEmbed
from .layers import FrozenMixin, image, make_norm, tokens


class PatchEmbeddings(nn.Module):
    """Stem: Conv2d 3 -> 64, kernel 4 stride 4, then norm and exact (erf) GELU on tokens."""

    def __init__(self, cfg: BHViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, STEM_CHANNELS, PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = make_norm(cfg.norm, STEM_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(tokens(self.proj(x))))


class Embeddings(nn.Module):
    def __init__(self, cfg: BHViTConfig) -> None:
        super().__init__()
        r = cfg.resolutions()[0]
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.position_embeddings = nn.Parameter(torch.zeros(1, STEM_CHANNELS, r, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.position_embeddings.shape[-1]
        return image(self.patch_embeddings(x), r, r) + self.position_embeddings


class Encoder(nn.Module):
    """Stages 1-2 of ``layerA`` blocks, 3-4 of ``layerB``; ``patch_embed{1,2,3}`` after stages 1-3."""

    def __init__(self, cfg: BHViTConfig) -> None:
        super().__init__()
        res = cfg.resolutions()
        self.stage_of: list[tuple[str, int]] = []
        a, b = [], []
        for s in range(4):
            dim, inter, heads = cfg.hidden_sizes[s], cfg.intermediate_sizes[s], cfg.num_heads[s]
            for _ in range(cfg.depths[s]):
                (b if s >= 2 else a).append(Block(cfg, dim, inter, heads, attention=s >= 2))
        self.layerA = nn.ModuleList(a)
        self.layerB = nn.ModuleList(b)
        for s in range(3):
            setattr(self, f"patch_embed{s + 1}", PatchEmbed(cfg, cfg.hidden_sizes[s], res[s + 1]))
        self.depths = list(cfg.depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self.layerA) + list(self.layerB)
        i = 0
        for s, depth in enumerate(self.depths):
            for _ in range(depth):
                x = blocks[i](x)
                i += 1
            if s < 3:
                x = getattr(self, f"patch_embed{s + 1}")(x)
        return x


class ViT(nn.Module):
    def __init__(self, cfg: BHViTConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.layernorm = make_norm(cfg.norm, cfg.hidden_sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layernorm(tokens(self.encoder(self.embeddings(x))))


class BHViT(nn.Module):
    """``pixel_values (B, 3, 224, 224) -> logits (B, num_labels)``."""

    def __init__(self, cfg: BHViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vit = ViT(cfg)
        self.classifier = nn.Linear(cfg.hidden_sizes[-1], cfg.num_labels)

    def freeze(self) -> "BHViT":
        """Eval mode with binarized weights and folded norms computed once (inference and export)."""
        self.eval()
        for m in self.modules():
            if isinstance(m, FrozenMixin):
                m.freeze()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.vit(pixel_values).mean(dim=1))
