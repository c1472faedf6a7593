"""The manifest's own fields (target, input, output, model config), checked like the files are.

The hashes prove the files are the ones the manifest lists, not that the manifest itself is sane:
an edited ``input.shape`` of ``"x"`` or ``-1`` would otherwise end in a TypeError deep inside the
runner (a traceback, exit 3). Every field ``verify`` reads is checked here, before anything is
loaded, and a bad one is a bad bundle (exit 2) naming the field.
"""

from __future__ import annotations

from typing import Any

from ..errors import BhvitError, BundleError

ARCHES = ("x86_64", "aarch64")
DEVICES = ("cpu", "cuda")
#: As compile's own bounds: images up to 4096 px, one input batch up to 1 GiB of float32.
MAX_IMAGE_SIZE = 4096
MAX_INPUT_BYTES = 1 << 30
MAX_CLASSES = 1_000_000


def _ints(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)


def check_fields(m: Any) -> None:
    """BundleError for the first field of a parsed Manifest that ``verify`` could not use."""
    def bad(field: str, value: Any, want: str) -> BundleError:
        return BundleError(f"manifest.json: {field} is {value!r:.80}, expected {want}")

    for name in ("target", "input", "output", "golden", "model"):
        if not isinstance(getattr(m, name), dict):
            raise bad(name, getattr(m, name), "an object")
    if m.target.get("arch") not in ARCHES:
        raise bad("target.arch", m.target.get("arch"), " or ".join(ARCHES))
    if m.target.get("device") not in DEVICES:
        raise bad("target.device", m.target.get("device"), " or ".join(DEVICES))
    if not isinstance(m.target.get("name"), str):
        raise bad("target.name", m.target.get("name"), "a string")
    features = m.target.get("cpu_features", [])  # recorded by compile for verify's CPU check
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        raise bad("target.cpu_features", features, "a list of feature names")
    shape = m.input.get("shape")
    if not _ints(shape, 4) or shape[1] != 3 or shape[2] != shape[3] or shape[2] > MAX_IMAGE_SIZE:
        raise bad("input.shape", shape, f"[batch, 3, S, S] with S up to {MAX_IMAGE_SIZE}")
    if shape[0] * 3 * shape[2] * shape[3] * 4 > MAX_INPUT_BYTES:
        raise bad("input.shape", shape, "at most 1 GiB per input")
    oshape = m.output.get("shape")
    if not _ints(oshape, 2) or oshape[0] != shape[0] or oshape[1] > MAX_CLASSES:
        raise bad("output.shape", oshape, f"[{shape[0]}, classes]")
    for where, spec in (("input", m.input), ("output", m.output)):
        if spec.get("dtype") != "float32":
            raise bad(f"{where}.dtype", spec.get("dtype"), "'float32'")
        if not isinstance(spec.get("name"), str):
            raise bad(f"{where}.name", spec.get("name"), "a string")
    config = m.model.get("config")
    if config is not None:
        from ..config import BHViTConfig

        if not isinstance(config, dict):
            raise bad("model.config", config, "an object or null")
        try:
            BHViTConfig.from_json(config)
        except BhvitError as e:
            raise BundleError(f"manifest.json: model.config: {e}") from None
