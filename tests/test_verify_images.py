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
    root = _folder(tmp_path / "imgs", 10, 1)  # the micro model's 10 classes
    (root / "class00" / "broken.jpg").write_bytes(b"this is not a jpeg")
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), "--runs", "0", "--no-torch", "--images", str(root)])
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error[")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]


# --------------------------------------------------------------------------------------------------
# issue #16: class indices (--labels, ImageNet synset order, refusal of another class count), --limit


def test_limit_samples_round_robin_over_the_classes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 3, 3)
    data = find_images(root, limit=4)
    assert list(data.labels) == [0, 1, 2, 0]  # not [0, 0, 0, 1]


def test_imagenet_synset_order_for_1000_classes(tmp_path: Path) -> None:
    from bhvit_export.verify.class_index import imagenet_synsets

    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets == sorted(synsets) and synsets[0] == "n01440764"
    root = tmp_path / "val"
    for wnid in ("n01443537", "n15075141"):  # ImageNet classes 1 and 999
        (root / wnid).mkdir(parents=True)
        PIL.new("RGB", (8, 8)).save(root / wnid / "x.png")
    data = find_images(root, num_classes=1000)
    assert list(data.labels) == [1, 999] and data.label_source == "ImageNet-1k synset order"


@pytest.mark.parametrize("fmt", ["json-list", "json-index", "json-keras", "txt"])
def test_labels_file_maps_folders_to_classes(fmt: str, tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 2, 1)  # class00, class01
    names = ["other", "class01", "class00", "more"]
    if fmt == "json-list":
        f = tmp_path / "l.json"
        f.write_text(json.dumps(names))
    elif fmt == "json-index":
        f = tmp_path / "l.json"
        f.write_text(json.dumps({n: i for i, n in enumerate(names)}))
    elif fmt == "json-keras":
        f = tmp_path / "l.json"
        f.write_text(json.dumps({str(i): [n, f"label {i}"] for i, n in enumerate(names)}))
    else:
        f = tmp_path / "l.txt"
        f.write_text("".join(f"{n} a description, with words\n" for n in names))
    data = find_images(root, num_classes=4, labels_file=f)
    assert list(data.labels) == [2, 1]


def test_class_count_mismatch_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 3, 1)
    with pytest.raises(BundleError, match="has 3 class folders, the model outputs 10 classes: pass --labels"):
        find_images(root, num_classes=10)
    f = tmp_path / "l.txt"
    f.write_text("class00\nclass01\nclass02\n")
    with pytest.raises(BundleError, match="lists 3 classes, the model outputs 10"):
        find_images(root, num_classes=10, labels_file=f)
    f.write_text("\n".join(["class00", "class01"] + [f"x{i}" for i in range(8)]))
    with pytest.raises(BundleError, match="class folders not in --labels l.txt: class02"):
        find_images(root, num_classes=10, labels_file=f)


@pytest.mark.parametrize("flag", [["--reference", "m.onnx"], ["--limit", "5"], ["--labels", "l.json"]])
def test_image_options_without_images_are_an_error(flag: list[str], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(tmp_path), *flag])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1].startswith(f"error[bundle]: {flag[0]} applies to --images DIR")
