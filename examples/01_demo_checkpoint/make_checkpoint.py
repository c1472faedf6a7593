"""Write a demo BHViT-Tiny checkpoint in the official training script's format, plus test images.

Why: trained BHViT weights are not downloadable from this environment, and the tool must be tried
end to end on a full-size model. The weights are seeded random values, but with every BatchNorm
statistic, bias and shift moved away from its initial value, so that each ``sign`` sees inputs on
both sides of 0 and every branch of the graph changes the logits: a wrong kernel shows up as a
wrong logit, as it would with trained weights.

The file is what the official ``main.py`` saves -- ``{'model', 'optimizer', 'lr_scheduler',
'epoch', 'scaler', 'args'}`` with ``args`` an ``argparse.Namespace`` of the paper's flags -- and
its bytes depend only on ``--seed``, ``--config`` and the output file name (torch.save names the
archive's top folder after the file).

    python examples/01_demo_checkpoint/make_checkpoint.py -o out/demo.pth
    # -> out/demo.pth (BHViT-Tiny, 1000 classes) and out/demo.inputs.npy (4 x 3 x 224 x 224)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bhvit_export.config import PAPER_HEADS, PAPER_HIDDEN, PAPER_INTERMEDIATE, BHViTConfig
from bhvit_export.model import BHViT

DEPTHS = {"tiny": (2, 2, 6, 2), "small": (3, 4, 8, 4)}


def training_args(config: str, num_classes: int, seed: int) -> argparse.Namespace:
    """The flags of the paper's runs (BHViT-Tiny/Small with full-precision downsampling)."""
    return argparse.Namespace(
        model=f"configs/BHViT{'_tiny' if config == 'tiny' else ''}",
        model_type="dbhvit",
        input_size=224,
        replace_ln_bn=True,
        shift3=True,
        shift5=True,
        weight_bits=1,
        input_bits=1,
        some_fp=True,
        gsb=False,
        recu=False,
        avg_res3=False,
        avg_res5=False,
        disable_layerscale=False,
        enable_cls_token=False,
        nb_classes=num_classes,
        seed=seed,
    )


def fill(key: str, shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    """A value for one state_dict entry, chosen by what the entry is (see the module docstring)."""
    module, leaf = key.split(".")[-2:]

    def randn(std: float, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(shape, generator=g)

    if leaf == "num_batches_tracked":
        return torch.tensor(1000, dtype=torch.long)
    if leaf == "running_mean":
        return randn(0.1)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf == "init_state":
        return torch.ones(shape)
    if module == "att_prob_quantizer" and leaf == "alpha":
        return 0.3 + 0.5 * torch.rand(shape, generator=g)  # QD step: must stay > 0
    if module == "att_prob_quantizer" and leaf == "zero_point":
        return randn(0.1)
    if module.startswith(("norm", "layernorm")) and leaf == "weight":
        return randn(0.05, 1.0)
    if module == "prelu":
        return randn(0.05, 0.25)
    if leaf in ("parm", "a1"):
        return randn(0.05, 0.5)
    if module == "layerscale" and leaf == "alpha":
        return randn(0.05, 0.1)
    if leaf == "weight" and len(shape) >= 2:  # conv / linear weights
        return randn(0.1 if key.startswith("vit.embeddings") else 0.06)
    return randn(0.05)  # biases, moves, position embeddings, shift LayerScales


def make_checkpoint(config: str = "tiny", seed: int = 0, num_classes: int = 1000) -> dict:
    cfg = BHViTConfig(
        hidden_sizes=tuple(PAPER_HIDDEN),
        depths=DEPTHS[config],
        num_heads=tuple(PAPER_HEADS),
        intermediate_sizes=tuple(PAPER_INTERMEDIATE),
        num_labels=num_classes,
    )
    # The model is only used for its key names and shapes, identical to the official code's.
    template = BHViT(cfg).state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {k: fill(k, v.shape, g).to(v.dtype).contiguous() for k, v in template.items()}
    return {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "weight_decay": 0.0, "params": list(range(len(sd)))}]},
        "lr_scheduler": {"base_values": [5e-4], "t_in_epochs": True},
        "epoch": 299,
        "scaler": {},
        "args": training_args(config, num_classes, seed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, default=Path("out/demo.pth"), help="checkpoint to write")
    p.add_argument("--config", choices=sorted(DEPTHS), default="tiny", help="the paper's configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=4, help="how many standard-normal test images to write")
    a = p.parse_args(argv)

    ckpt = make_checkpoint(a.config, a.seed, a.classes)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, a.output)
    inputs = np.random.default_rng(a.seed).standard_normal((a.images, 3, 224, 224), dtype=np.float32)
    inputs_path = a.output.with_name(a.output.stem + ".inputs.npy")
    np.save(inputs_path, inputs)
    n = sum(v.numel() for v in ckpt["model"].values())
    print(f"wrote {a.output} (BHViT-{a.config}, {n / 1e6:.1f} M values, seed {a.seed}) and {inputs_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
