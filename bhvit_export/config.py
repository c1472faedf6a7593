"""The BHViT architecture description, inferred from a state_dict's key set and shapes.

The official checkpoints carry no reliable config (``args`` names a config folder on the trainer's
disk), but every graph-changing flag leaves a trace in the keys, so we read the architecture off the
weights and, when the user passes the official ``config.json``, check the two agree.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, UnsupportedVariantError

IMAGE_SIZE = 224
PATCH_SIZE = 4
WINDOW = 7
STEM_CHANNELS = 64

#: The paper's two configurations (configs/BHViT_tiny and configs/BHViT).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"depths": [2, 2, 6, 2]},
    "small": {"depths": [3, 4, 8, 4]},
}
PAPER_HIDDEN = [64, 128, 256, 512]
PAPER_HEADS = [1, 1, 4, 8]
PAPER_INTERMEDIATE = [512, 1024, 1024, 2048]


@dataclass(frozen=True)
class BHViTConfig:
    """Everything that shapes the inference graph of one BHViT."""

    hidden_sizes: tuple[int, ...] = tuple(PAPER_HIDDEN)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = tuple(PAPER_HEADS)
    intermediate_sizes: tuple[int, ...] = tuple(PAPER_INTERMEDIATE)
    num_labels: int = 1000
    norm: str = "batchnorm"  # "batchnorm" (--replace-ln-bn) or "layernorm"
    shift3: bool = True
    shift5: bool = True
    binary_downsample: bool = False  # False: --some-fp (the paper's dagger models)
    layerscale: bool = True  # False: --disable-layerscale (output and attention.output only)
    gsb: bool = False  # --gsb: the GSB attention quantizer (spec step 6b) instead of QD
    layer_norm_eps: float = 1e-5
    image_size: int = IMAGE_SIZE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_layers_a(self) -> int:
        return self.depths[0] + self.depths[1]

    @property
    def num_layers_b(self) -> int:
        return self.depths[2] + self.depths[3]

    def resolutions(self) -> list[int]:
        base = self.image_size // PATCH_SIZE
        return [base >> i for i in range(4)]

    def paper_name(self) -> str | None:
        """'tiny'/'small' (with a dagger when downsampling is full precision) or None."""
        if (
            list(self.hidden_sizes) != PAPER_HIDDEN
            or list(self.num_heads) != PAPER_HEADS
            or list(self.intermediate_sizes) != PAPER_INTERMEDIATE
        ):
            return None
        for name, cfg in PAPER_CONFIGS.items():
            if list(self.depths) == cfg["depths"]:
                return name
        return None

    def describe(self) -> str:
        parts = [
            f"depths={list(self.depths)}",
            f"hidden={list(self.hidden_sizes)}",
            f"heads={list(self.num_heads)}",
            f"intermediate={list(self.intermediate_sizes)}",
            f"classes={self.num_labels}",
            f"norm={self.norm}",
            f"shift3={self.shift3}",
            f"shift5={self.shift5}",
            f"downsampling={'binary' if self.binary_downsample else 'full-precision'}",
            f"layerscale={self.layerscale}",
        ]
        if self.gsb:
            parts.append("attention-quantizer=GSB")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "BHViTConfig":
        """Inverse of :meth:`to_json` (bundle manifests, ONNX metadata); unknown keys are a ConfigError."""
        if not isinstance(obj, Mapping):
            raise ConfigError(f"a BHViT config is an object, got {type(obj).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ConfigError(f"unknown BHViT config keys {unknown}")
        for k, v in obj.items():
            _check_field(k, v)
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
        return cls(**kw)


#: What each field of a config read from a file (ONNX metadata, a manifest) may hold: a hostile or
#: damaged value must be refused here, not crash the model constructor (e.g. ``depths: "abc"``).
_STAGE_FIELDS = {"hidden_sizes": 1 << 16, "depths": 64, "num_heads": 1 << 10, "intermediate_sizes": 1 << 18}
_BOOL_FIELDS = ("shift3", "shift5", "binary_downsample", "layerscale")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_field(key: str, v: Any) -> None:
    if key in _STAGE_FIELDS:
        ok = isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_int(x) and 1 <= x <= _STAGE_FIELDS[key] for x in v)
        want = f"4 integers from 1 to {_STAGE_FIELDS[key]}"
    elif key in _BOOL_FIELDS:
        ok, want = isinstance(v, bool), "true or false"
    elif key == "norm":
        ok, want = v in ("batchnorm", "layernorm"), "'batchnorm' or 'layernorm'"
    elif key == "num_labels":
        ok, want = _is_int(v) and 1 <= v <= 1_000_000, "an integer from 1 to 1000000"
    elif key == "image_size":
        ok, want = _is_int(v) and PATCH_SIZE * 8 <= v <= 4096 and v % (PATCH_SIZE * 8) == 0, "a multiple of 32 up to 4096"
    elif key == "layer_norm_eps":
        ok, want = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1, "a number in (0, 1)"
    else:
        return
    if not ok:
        raise ConfigError(f"BHViT config key '{key}' is {v!r:.80}, expected {want}")


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ConfigError(f"not a BHViT state_dict: missing '{key}'")
    return tuple(int(s) for s in sd[key].shape)


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if idx and idx != set(range(max(idx) + 1)):
        raise ConfigError(f"layer indices under '{prefix}' are not contiguous: {sorted(idx)}")
    return len(idx)


def infer_config(sd: Mapping[str, Any], heads: list[int] | None = None) -> BHViTConfig:
    """Read the architecture off a (prefix-stripped) state_dict.

    ``heads`` is only used for GSB checkpoints, whose weights do not record the head count.

    Raises ConfigError/UnsupportedVariantError naming the key that does not fit; strict key
    matching against the model built from this config happens afterwards.
    """
    if "classifier.weight" not in sd or "vit.embeddings.patch_embeddings.proj.weight" not in sd:
        missing = [k for k in ("classifier.weight", "vit.embeddings.patch_embeddings.proj.weight") if k not in sd]
        raise ConfigError(f"not a BHViT state_dict: missing {', '.join(missing)}")
    for k in sd:
        if ".att_prob_quantizer." in k and not k.endswith((".alpha", ".zero_point", ".init_state")):
            raise UnsupportedVariantError(
                f"unsupported variant: unknown attention quantizer key '{k}' (known: QD's "
                "att_prob_quantizer.{alpha,zero_point,init_state}, GSB's att_prob_clip{,2,3})"
            )
    n_a = _count(sd, "vit.encoder.layerA")
    n_b = _count(sd, "vit.encoder.layerB")
    if n_a == 0 or n_b == 0:
        raise ConfigError(f"not a BHViT state_dict: found {n_a} layerA and {n_b} layerB blocks")
    hid_a = [_shape(sd, f"vit.encoder.layerA.{i}.layernorm_before.weight")[0] for i in range(n_a)]
    hid_b = [_shape(sd, f"vit.encoder.layerB.{i}.layernorm_before.weight")[0] for i in range(n_b)]
    stem = _shape(sd, "vit.embeddings.patch_embeddings.proj.weight")
    if stem[0] != STEM_CHANNELS or stem[1] != 3:
        raise ConfigError(f"stem conv has shape {list(stem)}, expected [64, 3, 4, 4]")
    hidden = [STEM_CHANNELS * (1 << s) for s in range(4)]
    depths = [hid_a.count(hidden[0]), hid_a.count(hidden[1]), hid_b.count(hidden[2]), hid_b.count(hidden[3])]
    if hid_a != [hidden[0]] * depths[0] + [hidden[1]] * depths[1] or hid_b != [hidden[2]] * depths[2] + [
        hidden[3]
    ] * depths[3]:
        raise ConfigError(f"block widths {hid_a + hid_b} do not follow 64/128/256/512 by stage")
    if 0 in depths:
        raise ConfigError(f"every stage needs at least one block, got depths {depths}")

    def first(stage: int) -> str:
        return f"vit.encoder.layerA.{sum(depths[:stage])}" if stage < 2 else f"vit.encoder.layerB.{sum(depths[:stage]) - n_a}"

    inter = [_shape(sd, f"{first(s)}.intermediate.dense.weight")[0] for s in range(4)]
    for s in range(4):
        if inter[s] % hidden[s]:
            raise ConfigError(f"intermediate size {inter[s]} of stage {s + 1} is not a multiple of {hidden[s]}")
    gsb = f"{first(2)}.attention.attention.att_prob_clip" in sd
    if gsb:
        # GSB's clips are scalars: the weights do not record the head count (see heads_from_config_json).
        heads = list(heads if heads is not None else PAPER_HEADS)
    else:
        heads = [1, 1] + [
            _shape(sd, f"{first(s)}.attention.attention.att_prob_quantizer.alpha")[0] for s in (2, 3)
        ]
    for s in (2, 3):
        if hidden[s] % heads[s]:
            raise ConfigError(f"{heads[s]} heads do not divide hidden size {hidden[s]} in stage {s + 1}")
    norm = "batchnorm" if "vit.encoder.layerA.0.layernorm_before.running_mean" in sd else "layernorm"
    cfg = BHViTConfig(
        hidden_sizes=tuple(hidden),
        depths=tuple(depths),
        num_heads=tuple(heads),
        intermediate_sizes=tuple(inter),
        num_labels=_shape(sd, "classifier.weight")[0],
        norm=norm,
        # The shift-branch LayerScales exist with or without --disable-layerscale, so they tell.
        shift3="vit.encoder.layerA.0.layerscale_h3.alpha" in sd,
        shift5="vit.encoder.layerA.0.layerscale_h5.alpha" in sd,
        binary_downsample="vit.encoder.patch_embed1.move" in sd,
        layerscale="vit.encoder.layerA.0.output.layerscale.alpha" in sd,
        gsb=gsb,
    )
    return cfg


def config_from_args(args: Any, cfg: BHViTConfig) -> BHViTConfig:
    """Apply the training flags stored in a checkpoint's ``args`` (refusing unsupported ones)."""
    raw = (lambda k, d=None: getattr(args, k, d)) if not isinstance(args, Mapping) else args.get

    def get(key: str, default: Any = None) -> Any:
        """A training flag: a number, a bool or None (a tensor or string there is not a flag of the official code)."""
        v = raw(key, default)
        if v is not None and not isinstance(v, (bool, int, float)):
            raise ConfigError(f"training args: '{key}' is a {type(v).__name__} ({v!r:.60}), expected a number or a bool")
        if isinstance(v, float) and not v.is_integer():
            raise ConfigError(f"training args: '{key}' is {v!r}, expected an integer or a bool")
        return v

    if bool(get("gsb", False)) != cfg.gsb:
        raise ConfigError(
            f"the training args say gsb={bool(get('gsb', False))} but the weights hold "
            f"{'GSB' if cfg.gsb else 'QD'} attention-quantizer keys"
        )
    for flag in ("weight_bits", "input_bits"):
        v = get(flag, 1)
        if v is not None and int(v) != 1:
            raise UnsupportedVariantError(f"unsupported variant: --{flag.replace('_', '-')}={v} (only 1-bit is exported)")
    for flag in ("enable_cls_token", "recu", "avg_res3", "avg_res5"):
        if get(flag, False):
            raise UnsupportedVariantError(f"unsupported variant: --{flag.replace('_', '-')} is not supported")
    return cfg


def heads_from_config_json(path: str | Path | None, args: Any | None) -> list[int] | None:
    """The head counts of a GSB model: from ``config.json`` when given, else the paper's.

    A GSB checkpoint stores no per-head tensor, so its head count is only in the official
    ``config.json``. Without one, the paper's heads (1,1,4,8: both official configs) are assumed
    only when ``args.model`` names an official config folder; otherwise we refuse rather than guess.
    """
    if path is not None:
        data = _read_json(path)
        heads = data.get("num_attention_heads")
        if not (isinstance(heads, list) and len(heads) == 4 and all(isinstance(h, int) and h > 0 for h in heads)):
            raise ConfigError(f"--config {path}: num_attention_heads must be 4 positive integers, got {heads!r}")
        return list(heads)
    get = (lambda k, d=None: getattr(args, k, d)) if not isinstance(args, Mapping) else args.get
    model = str(get("model", "") or "") if args is not None else ""
    if Path(model).name in ("BHViT_tiny", "BHViT"):
        return list(PAPER_HEADS)
    raise ConfigError(
        "a GSB (--gsb) checkpoint does not record its attention head counts"
        + (f" and its args.model '{model}' is not an official config" if model else "")
        + ": pass --config config.json (the official model config)"
    )


def _read_json(path: str | Path) -> dict[str, Any]:
    from .limits import read_json

    data = read_json(path, "--config", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} does not hold a JSON object")
    return data


def check_config_json(path: str | Path, cfg: BHViTConfig) -> None:
    """Compare an official config.json with what the weights say; raise on any disagreement."""
    data = _read_json(path)
    checks = {
        "hidden_size": list(cfg.hidden_sizes),
        "depths": list(cfg.depths),
        "num_attention_heads": list(cfg.num_heads),
        "intermediate_size": list(cfg.intermediate_sizes),
        "image_size": cfg.image_size,
        "patch_size": PATCH_SIZE,
        "num_channels": 3,
    }
    bad = [
        f"{k}: config says {data[k]}, weights say {v}" for k, v in checks.items() if k in data and data[k] != v
    ]
    eps = data.get("layer_norm_eps", cfg.layer_norm_eps)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        bad.append(f"layer_norm_eps: config says {eps!r:.40}, expected a number")
    elif abs(float(eps) - cfg.layer_norm_eps) > 1e-12:
        bad.append(f"layer_norm_eps: config says {data['layer_norm_eps']}, this tool supports 1e-05")
    if bad:
        raise ConfigError(f"--config {path} disagrees with the weights: " + "; ".join(bad))
