"""``verify --images``: ImageFolder listing, the official eval preprocessing, top-1 and agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

PIL = pytest.importorskip("PIL.Image")

from bhvit_export.cli import cli  # noqa: E402
from bhvit_export.errors import BundleError  # noqa: E402
from bhvit_export.golden import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from bhvit_export.verify.images import find_images, preprocess  # noqa: E402
from tests.helpers import official_path  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(w=st.integers(40, 400), h=st.integers(40, 400), rgb=st.tuples(*[st.integers(0, 255)] * 3))
def test_constant_image_normalises_exactly(tmp_path_factory, w: int, h: int, rgb) -> None:
    p = tmp_path_factory.mktemp("img") / "c.png"
    PIL.new("RGB", (w, h), rgb).save(p)
    x = preprocess(p, 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    want = (np.array(rgb) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 16, 16], want, rtol=1e-5, atol=1e-5)


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    im = PIL.new("RGB", (512, 256), (0, 0, 0))
    im.paste((255, 255, 255), (192, 0, 320, 256))  # a white band in the middle third
    im.save(tmp_path / "band.png")
    x = preprocess(tmp_path / "band.png", 224)
    # shorter side 256 -> unchanged; crop 224 of 512 starting at 144: the band is at 48..176
    white = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert abs(x[0, 112, 112] - white) < 1e-4
    assert x[0, 112, 5] < 0


def _folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (60 + 7 * i, 80, 3), dtype=np.uint8)
            PIL.fromarray(arr).save(d / f"{i}.png")
    return root


def test_listing_is_imagefolder_order(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 3, 2)
    (root / "class01" / "notes.txt").write_text("ignored: not an image extension")
    data = find_images(root)
    assert data.classes == ["class00", "class01", "class02"]
    assert list(data.labels) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(BundleError, match="no class folders"):
        find_images(tmp_path / "imgs" / "class00")


def test_verify_images_reports_top1_and_agreement(micro_bundle: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 10, 1)
    res = CliRunner().invoke(
        cli,
        ["verify", str(micro_bundle), "--runs", "0", "--no-torch", "--images", str(root),
         "--reference", str(official_path("micro") / "checkpoint.pth"), "--json"],
    )
    assert res.exit_code == 0, res.stderr
    im = json.loads(res.stdout)["images"]
    assert im["images"] == 10 and im["classes"] == 10
    assert 0.0 <= im["top1"] <= 1.0 and im["agreement"] == 1.0  # compiled == PyTorch on every image


def test_unreadable_image_is_one_line_exit_2(micro_bundle: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 2, 1)
    (root / "class00" / "broken.jpg").write_bytes(b"this is not a jpeg")
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), "--runs", "0", "--no-torch", "--images", str(root)])
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
