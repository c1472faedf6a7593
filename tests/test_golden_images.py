"""The structured golden images and the v2 golden recipe (``bhvit_export/golden_images.py``, ``golden.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bhvit_export.golden import RECIPE, RECIPE_V1, Golden, from_metadata, recipe_inputs
from bhvit_export.golden_images import structured_images, upsample_bilinear
from tests.helpers import official_path


def test_structured_images_follow_the_fixture_formulas() -> None:
    """Gradient, checkerboard and stripes equal the official fixtures' images (the noise image draws
    its grid from numpy, not torch, so only its statistics are alike)."""
    ref = np.load(official_path("micro-gsb") / "inputs_structured.npy")
    ours = structured_images(224)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:3], ref[:3], atol=1e-4, rtol=0)  # stripes: sin() in float32 there
    assert abs(float(ours[3].std()) - float(ref[3].std())) < 0.5


def test_upsample_is_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    g = np.random.default_rng(0).random((8, 5, 3))
    want = F.interpolate(torch.from_numpy(g.transpose(2, 0, 1)[None]), size=37, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(upsample_bilinear(g, 37), want[0].numpy().transpose(1, 2, 0), atol=1e-12)


def test_v2_golden_roundtrips_and_v1_still_reads() -> None:
    x = recipe_inputs(RECIPE, 6, 32, 5)
    assert x.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(x[2:], structured_images(32))
    y = np.arange(12, dtype=np.float32).reshape(6, 2)
    back = from_metadata(Golden(x, y, "pytorch").to_metadata(5))
    np.testing.assert_array_equal(back.inputs, x)
    np.testing.assert_array_equal(back.outputs, y)
    old = json.loads(Golden(recipe_inputs(RECIPE_V1, 2, 32, 5), y[:2], "pytorch").to_metadata(5))
    old["recipe"] = RECIPE_V1
    assert from_metadata(json.dumps(old)).inputs.shape == (2, 3, 32, 32)
