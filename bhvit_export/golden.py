"""Golden inputs and the PyTorch reference outputs that travel with a model to the device.

``verify`` must compare the compiled model against the *PyTorch* model, but a bundle is compiled
from an ONNX file and verified on a device without torch. So ``to-onnx`` runs the PyTorch model on a
few deterministic inputs and records its logits in the ONNX metadata (``bhvit.golden``, a few KB); the
inputs themselves are not stored: they are regenerated from the recorded seed, and their SHA-256 is
stored too, so a numpy that generated other numbers is caught instead of silently comparing wrong
pairs. ``compile`` copies both into the bundle as ``.npy`` files.

The inputs look like normalised images (uniform pixels in [0, 1] through the ImageNet mean/std of the
official training), not like N(0, 1) noise, so the activations stay in the range the model was trained on.
Since recipe v2 the set also holds the structured images of :mod:`.golden_images` (gradient,
checkerboard, stripes, upsampled noise): noise images alone give nearly the same logits, so a model
that ignored its input would pass on them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import ModelFileError
from .golden_images import IMAGENET_MEAN, IMAGENET_STD, structured_images

METADATA_KEY = "bhvit.golden"
RECIPE_V1 = "uniform01-imagenet-normalized/v1"
#: v2: ``count - 4`` uniform images from ``seed``, then the 4 structured images.
RECIPE = "uniform01+structured-imagenet-normalized/v2"
RECIPES = (RECIPE_V1, RECIPE)
DEFAULT_SEED = 20250611
DEFAULT_COUNT = 8  # 4 uniform-noise images + the 4 structured ones
#: Bounds on what a (possibly hostile) ``bhvit.golden`` entry or golden file may ask us to allocate.
MAX_GOLDEN_COUNT = 1024
MAX_IMAGE_SIZE = 4096


def golden_inputs(count: int, image_size: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[count, 3, S, S]`` float32 normalised 'images' from ``seed`` (PCG64, platform-independent)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    pixels = rng.random((count, image_size, image_size, 3))  # float64 in [0, 1)
    x = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def recipe_inputs(recipe: str, count: int, image_size: int, seed: int) -> np.ndarray:
    """The golden inputs of ``recipe`` (v1: uniform only; v2: uniform then the 4 structured images)."""
    if recipe == RECIPE_V1:
        return golden_inputs(count, image_size, seed)
    structured = structured_images(image_size)
    n_uniform = count - len(structured)
    if n_uniform < 0:
        raise ValueError(f"recipe {recipe} needs at least {len(structured)} images, got {count}")
    return np.concatenate([golden_inputs(n_uniform, image_size, seed), structured[: count - n_uniform]])


def sha256_array(a: np.ndarray) -> str:
    """Digest of an array's dtype, shape and C-order bytes."""
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Golden:
    """Inputs and the reference outputs computed from them, and who computed the outputs."""

    inputs: np.ndarray
    outputs: np.ndarray
    source: str  # "pytorch", "onnxruntime", or "user"

    def to_metadata(self, seed: int) -> str:
        """JSON for ``bhvit.golden``: the recipe + seed (not the inputs) and the outputs."""
        out = np.ascontiguousarray(self.outputs, dtype="<f4")
        return json.dumps(
            {
                "recipe": RECIPE,
                "seed": seed,
                "count": int(self.inputs.shape[0]),
                "image_size": int(self.inputs.shape[-1]),
                "inputs_sha256": sha256_array(self.inputs),
                "outputs_shape": list(out.shape),
                "outputs_f32le_b64": base64.b64encode(out.tobytes()).decode("ascii"),
                "source": self.source,
            },
            sort_keys=True,
        )


def from_metadata(text: str) -> Golden:
    """Rebuild the golden pair from ``bhvit.golden``; a damaged entry is a ModelFileError."""
    from .limits import MAX_GOLDEN_BYTES, parse_json

    try:
        meta: dict[str, Any] = parse_json(text, f"{METADATA_KEY} metadata is damaged", ModelFileError)
        if not isinstance(meta, dict):
            raise TypeError(f"a JSON object was expected, got {type(meta).__name__}")
        if meta.get("recipe") not in RECIPES:
            raise ModelFileError(f"{METADATA_KEY}: unknown input recipe {meta.get('recipe')!r:.80}")
        count, size, seed = (_int(meta, k) for k in ("count", "image_size", "seed"))
        if not (1 <= count <= MAX_GOLDEN_COUNT and 1 <= size <= MAX_IMAGE_SIZE):
            raise ModelFileError(
                f"{METADATA_KEY}: {count} inputs of {size}x{size} is out of range "
                f"(1 to {MAX_GOLDEN_COUNT} inputs, 1 to {MAX_IMAGE_SIZE} pixels)"
            )
        if count * 3 * size * size * 4 > MAX_GOLDEN_BYTES:
            raise ModelFileError(
                f"{METADATA_KEY}: {count} inputs of {size}x{size} are {count * 3 * size * size * 4 / 2**20:.0f} MiB, "
                f"beyond the supported {MAX_GOLDEN_BYTES // 2**20} MiB of golden inputs"
            )
        if not isinstance(meta.get("inputs_sha256"), str) or not isinstance(meta.get("outputs_f32le_b64"), str):
            raise KeyError("inputs_sha256 and outputs_f32le_b64 must be strings")
        x = recipe_inputs(str(meta["recipe"]), count, size, seed)
        raw = base64.b64decode(meta["outputs_f32le_b64"], validate=True)
        shape = meta["outputs_shape"]
        if not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"outputs_shape {shape!r:.80} is not [count, classes]")
        y = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelFileError(f"{METADATA_KEY} metadata is damaged ({type(e).__name__}: {str(e)[:200]})") from None
    if sha256_array(x) != meta["inputs_sha256"]:
        raise ModelFileError(
            f"{METADATA_KEY}: this numpy generates other golden inputs than the one that exported the model "
            "(pass --golden-inputs/--golden-outputs, or re-export with to-onnx)"
        )
    if y.shape[0] != x.shape[0]:
        raise ModelFileError(f"{METADATA_KEY}: {y.shape[0]} outputs for {x.shape[0]} inputs")
    return Golden(inputs=x, outputs=y, source=str(meta.get("source", "pytorch")))


def _int(meta: dict[str, Any], key: str) -> int:
    """An integer field of the metadata (not a float, string or bool that int() would accept)."""
    v = meta[key]
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise ValueError(f"{key} is {v!r:.40}, expected a non-negative integer")
    return v


def pytorch_golden(model: Any, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Golden:
    """Run the (frozen, eval) PyTorch model on the golden inputs, one image at a time.

    One at a time so the reference does not depend on the batch size torch would pick kernels for.
    """
    import torch

    x = recipe_inputs(RECIPE, count, int(model.config.image_size), seed)
    with torch.no_grad():
        ys = [model(torch.from_numpy(x[i : i + 1])).numpy() for i in range(count)]
    return Golden(inputs=x, outputs=np.concatenate(ys, axis=0).astype(np.float32), source="pytorch")


def golden_of_model(proto: Any) -> Optional[Golden]:
    """The golden pair recorded in an ONNX ModelProto, or None if it has none."""
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return from_metadata(prop.value)
    return None
