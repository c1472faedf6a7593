"""``verify --images DIR``: top-1 accuracy on real labeled images, compiled model vs reference.

Layout: torchvision's ``ImageFolder`` (``DIR/<class>/<image>``; the class index is the position of
the class folder in sorted order, which is how the official training numbered ImageNet's synsets).
Preprocessing is the official evaluation transform (``datasets.py: build_transform(is_train=False)``):
resize the shorter side to ``int(256/224 * S)`` with bicubic interpolation, center-crop ``S``, scale
to [0, 1], normalise with the ImageNet mean/std. Decoding uses Pillow (the ``images`` extra), which is
also what torchvision's default loader uses, so the pixels match the training pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import BundleError
from ..golden import IMAGENET_MEAN, IMAGENET_STD

#: torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabeledImages:
    paths: list[Path]
    labels: np.ndarray  # int64 class indices of the model
    classes: list[str]  # the class folders, sorted
    label_source: str = "sorted folder names (ImageFolder)"


def find_images(
    root: Path, limit: Optional[int] = None, num_classes: Optional[int] = None, labels_file: Optional[Path] = None
) -> LabeledImages:
    """The ImageFolder listing of ``root``, labelled with the model's class indices.

    ``num_classes`` (the model's) turns on the checks of :mod:`.class_index`; ``limit`` takes images
    round-robin over the classes (the first of each class, then the second, ...), so a small limit
    still covers every class instead of the first one or two.
    """
    if not root.is_dir():
        raise BundleError(f"--images {root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise BundleError(f"--images {root}: no class folders (expected DIR/<class>/<image>)")
    if num_classes is None:
        index, source = {c: i for i, c in enumerate(classes)}, "sorted folder names (ImageFolder)"
    else:
        from .class_index import folder_indices

        index, source = folder_indices(classes, num_classes, labels_file, root)
    per_class = [
        [p for p in sorted((root / name).rglob("*")) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        for name in classes
    ]
    if not any(per_class):
        raise BundleError(f"--images {root}: no image files ({', '.join(IMG_EXTENSIONS)}) in the class folders")
    if limit is None:
        order = [(c, p) for c, files in enumerate(per_class) for p in files]
    else:  # round-robin over the classes: the i-th image of every class before any (i+1)-th
        depth = max(len(f) for f in per_class)
        order = [(c, per_class[c][i]) for i in range(depth) for c in range(len(classes)) if i < len(per_class[c])]
        order = order[:limit]
    paths = [p for _, p in order]
    labels = [index[classes[c]] for c, _ in order]
    return LabeledImages(paths, np.asarray(labels, dtype=np.int64), classes, source)


def preprocess(path: Path, size: int = 224) -> np.ndarray:
    """One image -> float32 ``[3, size, size]`` exactly as the official evaluation transform."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise BundleError("--images needs Pillow: pip install 'bhvit-export[images]'") from None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            short = int(256 / 224 * size)
            if w <= h:
                nw, nh = short, int(short * h / w)
            else:
                nw, nh = int(short * w / h), short
            im = im.resize((nw, nh), Image.BICUBIC)
            top = int(round((nh - size) / 2.0))
            left = int(round((nw - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
            x = np.asarray(im, dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        # DecompressionBombError: a header claiming more pixels than Pillow's limit (a hostile file)
        raise BundleError(f"--images: cannot read {path} as an image ({type(e).__name__})") from None
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def reference_runner(path: Path, size: int = 224, classes: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    """The reference model for ``--reference``: an .onnx (onnxruntime) or a checkpoint (PyTorch).

    Checked before any image is read: a missing, corrupt or foreign file, or a model for other image
    sizes or class counts than the bundle's, is one line naming what is wrong (exit 2).
    """
    from ..limits import regular_file

    what = f"--reference {path}"
    regular_file(path, "--reference", BundleError)
    if path.suffix == ".onnx":
        return _onnx_reference(path, size, classes, what)
    try:
        import torch
    except ImportError:
        raise BundleError("--reference CHECKPOINT needs torch installed (or pass the reference .onnx)") from None
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(path).model.freeze()
    cfg = model.config
    if cfg.image_size != size or (classes is not None and cfg.num_labels != classes):
        raise BundleError(
            f"{what}: a model of {cfg.image_size}x{cfg.image_size} images and {cfg.num_labels} classes, "
            f"the bundle's takes {size}x{size} and {classes}"
        )

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def _onnx_reference(path: Path, size: int, classes: Optional[int], what: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError("--reference MODEL.onnx needs onnxruntime installed") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"{what}: not an ONNX model onnxruntime can load ({first})") from None
    ins, outs = sess.get_inputs(), sess.get_outputs()
    want_in, want_out = [3, size, size], classes
    if (
        len(ins) != 1 or len(outs) != 1 or ins[0].type != "tensor(float)" or len(ins[0].shape) != 4
        or list(ins[0].shape[1:]) != want_in or len(outs[0].shape) != 2
        or (want_out is not None and isinstance(outs[0].shape[1], int) and outs[0].shape[1] != want_out)
    ):
        got = f"inputs {[(i.name, i.shape) for i in ins]}, outputs {[(o.name, o.shape) for o in outs]}"
        raise BundleError(f"{what}: not an image classifier for this bundle (expected float [N, 3, {size}, {size}] -> [N, {classes}], got {got})")
    name = ins[0].name

    def run(x: np.ndarray) -> np.ndarray:
        try:
            y = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise BundleError(f"{what}: onnxruntime failed to run it ({first})") from None
        if y.ndim != 2 or (want_out is not None and y.shape[1] != want_out):
            raise BundleError(f"{what}: returned {list(y.shape)}, expected [N, {classes}]")
        return y

    return run


def accuracy_on_images(
    root: Path,
    compiled: Callable[[np.ndarray], np.ndarray],
    batch: int,
    size: int,
    reference: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    limit: Optional[int] = None,
    say: Callable[[str], None] = lambda _m: None,
    num_classes: Optional[int] = None,
    labels_file: Optional[Path] = None,
) -> dict[str, Any]:
    """Top-1 of the compiled model (and of the reference, and their agreement) on ``root``."""
    data = find_images(root, limit, num_classes, labels_file)
    preds, ref_preds = [], []
    for i in range(0, len(data.paths), batch):
        chunk = data.paths[i : i + batch]
        x = np.stack([preprocess(p, size) for p in chunk])
        if len(chunk) < batch:  # pad the last batch; the padding's outputs are dropped
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(chunk), axis=0)])
        y = compiled(x)[: len(chunk)]
        if y.shape[-1] < len(data.classes):
            raise BundleError(f"--images has {len(data.classes)} classes, the model outputs {y.shape[-1]}")
        preds.append(y.argmax(axis=-1))
        if reference is not None:
            ref_preds.append(reference(x[: len(chunk)]).argmax(axis=-1))
        say(f"images: {min(i + batch, len(data.paths))}/{len(data.paths)}")
    p = np.concatenate(preds)
    out: dict[str, Any] = {"images": len(p), "classes": len(data.classes), "top1": float(np.mean(p == data.labels)),
                           "labels": data.label_source}
    if ref_preds:
        r = np.concatenate(ref_preds)
        out["reference_top1"] = float(np.mean(r == data.labels))
        out["agreement"] = float(np.mean(r == p))
    return out
