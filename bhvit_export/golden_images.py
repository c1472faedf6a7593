"""Structured golden images: inputs whose logits depend on what the picture shows.

Uniform-noise images are statistically alike, so a model's logits barely differ between them and a
compiled model that ignored its input would still match the reference on them. These four do
exercise the model: a smooth colour gradient, a two-colour checkerboard of 16-pixel squares,
oblique sinusoid stripes, and 8x8 noise upsampled bilinearly. The first three follow the formulas
of the official fixtures' ``inputs_structured.npy`` (``manifest.json``) exactly; the noise image
draws its 8x8 grid from numpy's PCG64 (the fixtures used torch's generator), so no torch is needed
to regenerate them on a device. Each is made in [0, 1] and normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
NAMES = ("gradient", "checkerboard", "stripes", "upsampled-noise")
NOISE_SEED = 2025
NOISE_GRID = 8
SQUARE = 16
STRIPE_PERIOD = 20.0
STRIPE_ANGLE_DEG = 30.0


def normalize(rgb01: np.ndarray) -> np.ndarray:
    """``[N, S, S, 3]`` in [0, 1] -> float32 ``[N, 3, S, S]`` through the ImageNet mean/std."""
    x = (rgb01 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def upsample_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """``[h, w, C] -> [size, size, C]``, bilinear with ``align_corners=False`` (torch's
    ``F.interpolate(mode='bilinear')``): source coordinate ``(dst + 0.5) * in / out - 0.5``,
    clamped at 0, neighbours clamped to the edge."""
    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(img.shape[0])
    x0, x1, fx = axis(img.shape[1])
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def structured_rgb(size: int) -> np.ndarray:
    """The four images in [0, 1], ``[4, S, S, 3]`` float64 (x = column, y = row, 0-based)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    last = max(size - 1, 1)
    gradient = np.stack([x / last, y / last, 1 - (x + y) / (2 * last)], axis=-1)
    even = ((x // SQUARE + y // SQUARE) % 2 == 0)[..., None]
    checker = np.where(even, np.array([0.95, 0.85, 0.10]), np.array([0.05, 0.20, 0.90]))
    t = np.deg2rad(STRIPE_ANGLE_DEG)
    phase = 2 * np.pi * (x * np.cos(t) + y * np.sin(t)) / STRIPE_PERIOD
    stripes = np.stack([0.5 + 0.5 * np.sin(phase + c * 2 * np.pi / 3) for c in range(3)], axis=-1)
    grid = np.random.Generator(np.random.PCG64(NOISE_SEED)).random((NOISE_GRID, NOISE_GRID, 3))
    noise = np.clip(upsample_bilinear(grid, size), 0.0, 1.0)
    return np.stack([gradient, checker, stripes, noise])


def structured_images(size: int) -> np.ndarray:
    """float32 ``[4, 3, S, S]``, normalised: what ``to-onnx`` adds to the golden set."""
    return normalize(structured_rgb(size))
