"""PyTorch inference model of BHViT, state_dict-compatible with the official code."""

from .bhvit import BHViT

__all__ = ["BHViT"]
