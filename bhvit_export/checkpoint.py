"""Load a checkpoint of the official BHViT training code, safely, into a ready :class:`BHViT`.

A checkpoint is untrusted input: ``torch.load`` unpickles, and an unrestricted unpickler runs
whatever code the file names. So we only ever load with ``weights_only=True`` (allow-listing
``argparse.Namespace``, which every official checkpoint carries as ``args``) and turn every refusal
into one :class:`CheckpointError` line -- there is deliberately no "trust this file" fallback.

Every way a file can be wrong gets its own message (missing, empty, truncated, not a checkpoint,
not BHViT, keys missing or mis-shaped, NaN weights), because the person reading it needs to know
whether to re-download, pick another ``--entry`` or report a bug, not read a torch traceback.
"""

from __future__ import annotations

import argparse
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from .config import BHViTConfig, config_from_args, heads_from_config_json, infer_config
from .errors import BhvitError, CheckpointError

if TYPE_CHECKING:  # torch is imported lazily so that `bhvit-export --help` stays instant
    import torch

    from .model import BHViT

Entry = Literal["auto", "model", "model_ema", "state_dict", "bare"]
ENTRIES: tuple[str, ...] = ("auto", "model", "model_ema", "state_dict", "bare")
#: The order ``entry="auto"`` tries: the trained weights first, the EMA copy only as a last resort
#: (the official code saves ``model_ema`` beside ``model`` and evaluates ``model``).
AUTO_ORDER: tuple[str, ...] = ("model", "state_dict", "model_ema")
#: How many names an error lists before saying "and N more": enough to see the pattern, one line.
SHOW = 5
DDP_PREFIX = "module."


@dataclass
class LoadedCheckpoint:
    """A checkpoint read, checked and loaded into an eval-mode model."""

    path: Path
    state_dict: dict[str, "torch.Tensor"]
    args: Any | None  # the training flags (argparse.Namespace or a dict), if the file had them
    config: BHViTConfig
    model: "BHViT"
    entry: str  # which entry of the file held the weights ("bare" for a bare state_dict)
    stripped_prefix: str  # "module." when DDP prefixes were removed, else ""

    @property
    def summary(self) -> str:
        """One human line: what was found where, and the architecture inferred from it."""
        name = self.config.paper_name()
        variant = f"BHViT-{name}{'' if self.config.binary_downsample else ' (fp downsampling)'}" if name else "BHViT"
        src = f"entry '{self.entry}'" if self.entry != "bare" else "bare state_dict"
        if self.stripped_prefix:
            src += f", '{self.stripped_prefix}' prefix stripped"
        flags = "with training args" if self.args is not None else "no training args"
        return f"{variant} from {src} ({len(self.state_dict)} tensors, {flags}): {self.config.describe()}"


def _names(items: list[str], total: int | None = None) -> str:
    """``a, b, c and 7 more``: bounded so that every error stays one readable line."""
    total = len(items) if total is None else total
    shown = ", ".join(items[:SHOW])
    return shown + (f" and {total - SHOW} more" if total > SHOW else "")


def _read(path: Path) -> Any:
    """``torch.load`` restricted to tensors, containers and ``argparse.Namespace``."""
    import pickle

    import torch

    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file (.pth)")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    from .limits import regular_file

    regular_file(path, "checkpoint", CheckpointError)  # /dev/zero never ends; a FIFO blocks on open
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    _check_unpacked_size(path, size)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the refusal below says enough
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL\s+([\w.]+)", msg)
        if m:
            raise CheckpointError(
                f"refused: the file needs unpickling of {m.group(1)}, which could run code; "
                "only tensors, plain containers and argparse.Namespace are loaded"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable pickle data)") from None
    except (EOFError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, EOFError) or "zip archive" in text or "central directory" in text:
            raise CheckpointError(
                f"{path} is truncated or corrupt ({size} bytes): re-download or re-copy it"
            ) from None
        raise CheckpointError(f"{path} could not be read by torch.load: {text.splitlines()[0] if text else type(e).__name__}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, UnicodeDecodeError) as e:
        # The restricted unpickler raises these on malformed streams that are not zip files.
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(e).__name__} while unpickling)") from None


def _check_unpacked_size(path: Path, size: int) -> None:
    """Refuse a checkpoint that would unpack beyond the limit (a zip bomb) before torch inflates it."""
    import zipfile

    from .limits import MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_ENTRIES

    total, entries = size, 1
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
            total, entries = sum(i.file_size for i in infos), len(infos)
    except Exception:  # BadZipFile, NotImplementedError, struct.error, ...: a damaged directory
        return  # torch.load then reports the file as truncated or corrupt
    if total > MAX_CHECKPOINT_BYTES or entries > MAX_CHECKPOINT_ENTRIES:
        raise CheckpointError(
            f"{path} unpacks to {total / 2**30:.1f} GiB in {entries} entries, beyond the supported "
            f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB and {MAX_CHECKPOINT_ENTRIES} entries (BHViT-Small's "
            "training checkpoint is about 0.35 GiB): not a BHViT checkpoint, or a zip bomb"
        )


#: Tensor dtypes a BHViT checkpoint may hold: real floats (weights, cast to float32 on load) and
#: integer counters (BatchNorm's num_batches_tracked). Anything else cannot come from the official
#: training code and would be cast silently (complex drops its imaginary part, bool becomes 0/1).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64")


def _check_tensor_kinds(sd: Mapping[str, "torch.Tensor"]) -> None:
    """Refuse sparse, meta and quantized tensors and dtypes outside the ones above, naming the key."""
    import torch

    for k, v in sd.items():
        dtype = str(v.dtype).removeprefix("torch.")
        if v.layout != torch.strided:
            raise CheckpointError(f"tensor '{k}' is {str(v.layout).removeprefix('torch.')} ({dtype}); only dense tensors are loaded")
        if v.is_meta or v.device.type != "cpu":
            raise CheckpointError(f"tensor '{k}' ({dtype}) is on device '{v.device.type}' and holds no data")
        if dtype not in FLOAT_DTYPES + INT_DTYPES:
            raise CheckpointError(
                f"tensor '{k}' has dtype {dtype}; a BHViT checkpoint holds {', '.join(FLOAT_DTYPES)} weights "
                f"and {', '.join(INT_DTYPES)} counters"
            )


def _check_dtypes_fit(sd: Mapping[str, "torch.Tensor"], expected: Mapping[str, "torch.Tensor"]) -> None:
    """A float where the model has a float, an integer where it has one (no silent cast across)."""
    for k, v in expected.items():
        got = sd[k]
        if got.is_floating_point() != v.is_floating_point():
            want = "a float" if v.is_floating_point() else "an integer"
            raise CheckpointError(f"tensor '{k}' has dtype {str(got.dtype).removeprefix('torch.')}, the model needs {want} tensor")


def _is_state_dict(obj: Any) -> bool:
    """A non-empty str -> tensor mapping (how both bare files and entries look)."""
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _select(obj: Any, entry: str, path: Path) -> tuple[Mapping[str, Any], str]:
    """Pick the state_dict out of the file's top-level object according to ``entry``."""
    if entry not in ENTRIES:
        raise CheckpointError(f"--entry must be one of {', '.join(ENTRIES)}, got '{entry}'")
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} is not a checkpoint: it holds a {type(obj).__name__}, expected a dict "
            "(a state_dict, or the training script's {'model': ..., 'args': ...})"
        )
    keys = [str(k) for k in obj]
    candidates = [e for e in AUTO_ORDER if e in obj and isinstance(obj[e], Mapping)]
    if entry == "auto":
        if candidates:
            entry = candidates[0]
        elif _is_state_dict(obj):
            entry = "bare"
        else:
            raise CheckpointError(
                f"{path} is not a checkpoint: no 'model', 'state_dict' or 'model_ema' entry and no "
                f"tensors at the top level (found keys: {_names(keys) or 'none'})"
            )
    if entry == "bare":
        if not _is_state_dict(obj):
            raise CheckpointError(f"--entry bare: {path} does not hold a bare state_dict (found keys: {_names(keys)})")
        return obj, "bare"
    if entry not in obj:
        have = ", ".join(e for e in AUTO_ORDER if e in obj) or "none"
        raise CheckpointError(f"--entry {entry}: {path} has no '{entry}' entry (weight entries present: {have})")
    sd = obj[entry]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"entry '{entry}' of {path} holds a {type(sd).__name__}, expected a state_dict")
    return sd, entry


def _strip_prefix(sd: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Remove DDP's ``module.`` (possibly nested) when *every* key has it.

    A partial prefix is left alone on purpose: the key check then names those keys as unexpected,
    which is more honest than guessing.
    """
    out = dict(sd)
    stripped = ""
    while out and all(k.startswith(DDP_PREFIX) for k in out):
        out = {k[len(DDP_PREFIX) :]: v for k, v in out.items()}
        stripped = DDP_PREFIX
    return out, stripped


def _check_values(sd: Mapping[str, Any]) -> None:
    import torch

    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        kinds = sorted({type(sd[k]).__name__ for k in bad})
        raise CheckpointError(
            f"the state_dict has {len(bad)} non-tensor values ({', '.join(kinds)}): {_names(bad)}"
        )


def _check_finite(sd: Mapping[str, "torch.Tensor"]) -> None:
    """NaN/Inf weights export fine and then give garbage logits: refuse them up front."""
    import torch

    bad = [
        k for k, v in sd.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v.detach()).all())
    ]
    if bad:
        raise CheckpointError(
            f"{len(bad)} tensors hold NaN or Inf values (training diverged?): {_names(bad)}"
        )


def _check_keys(sd: Mapping[str, "torch.Tensor"], expected: Mapping[str, "torch.Tensor"], cfg: BHViTConfig) -> None:
    """Compare keys and shapes by name before ``load_state_dict``, whose message is a wall of text."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k} (file {list(sd[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if shaped:
        parts.append(f"{len(shaped)} mis-shaped: {_names(shaped)}")
    raise CheckpointError(
        f"the weights do not fit the BHViT inferred from them ({cfg.describe()}): " + "; ".join(parts)
    )


def load_checkpoint(
    path: str | Path, *, entry: Entry | str = "auto", config_json: str | Path | None = None
) -> LoadedCheckpoint:
    """Read ``path`` safely, infer the architecture, check every key, and load an eval-mode model.

    ``entry`` picks the weights inside a training checkpoint: ``auto`` tries ``model``, then
    ``state_dict``, then ``model_ema``, then the file as a bare state_dict. ``config_json`` (the
    official config.json) supplies the head counts of a GSB model, which its weights do not hold.
    Raises :class:`CheckpointError`, :class:`UnsupportedVariantError` or :class:`ConfigError`.
    """
    from .model import BHViT

    path = Path(path)
    obj = _read(path)
    raw, used = _select(obj, entry, path)
    args = obj.get("args") if used != "bare" and isinstance(obj, Mapping) else None
    if not raw:
        raise CheckpointError(f"entry '{used}' of {path} is an empty state_dict")
    if not all(isinstance(k, str) for k in raw):
        raise CheckpointError(f"entry '{used}' of {path} has non-string keys: not a state_dict")
    sd, stripped = _strip_prefix(raw)
    _check_values(sd)
    _check_tensor_kinds(sd)
    try:
        gsb = any(k.endswith(".attention.attention.att_prob_clip") for k in sd)
        cfg = infer_config(sd, heads_from_config_json(config_json, args) if gsb else None)
    except BhvitError:
        raise
    except KeyError as e:  # infer_config reads a few specific keys; a pruned file may lack one
        raise CheckpointError(
            f"not a complete BHViT state_dict: key {e.args[0]!r}, needed to infer the architecture, is missing"
        ) from None
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise CheckpointError(f"not a BHViT state_dict: its shapes do not fit ({type(e).__name__}: {e})") from None
    if args is not None:
        cfg = config_from_args(args, cfg)
    model = BHViT(cfg)
    expected = model.state_dict()
    _check_keys(sd, expected, cfg)
    _check_dtypes_fit(sd, expected)
    _check_finite(sd)
    # A half-precision file loads into float32 parameters: load_state_dict copies with a cast.
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # should not happen after _check_keys; keep it one line if it does
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"load_state_dict failed: {first}") from None
    model.eval()
    return LoadedCheckpoint(
        path=path, state_dict=sd, args=args, config=cfg, model=model, entry=used, stripped_prefix=stripped
    )


__all__ = ["ENTRIES", "Entry", "LoadedCheckpoint", "load_checkpoint"]
