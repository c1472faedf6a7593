"""Every way a checkpoint can be wrong, through the CLI: exit 2, one line on stderr, no file left.

The damaged files are variants of the official micro checkpoint, written per test. Each failing
case also checks that the output folder stays empty (no temp file, no partial model), because a
later ``compile`` trusts whatever ONNX file it finds.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from click.testing import CliRunner

from bhvit_export.checkpoint import load_checkpoint
from bhvit_export.cli import cli
from bhvit_export.errors import BhvitError
from tests.helpers import is_error_line, official_path

CONV_BIAS = "vit.encoder.layerA.0.GC.cov2.bias"


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def export_fails(tmp_path: Path, ckpt: Path | str, *extra: str, expect: str) -> str:
    """Run ``to-onnx --reference`` on a bad checkpoint; check the error contract; return the line."""
    out_dir = tmp_path / "out"
    result = run_cli("to-onnx", str(ckpt), "-o", str(out_dir / "model.onnx"), "--reference", *extra)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1, result.stderr
    assert is_error_line(lines[0])
    assert "Traceback" not in result.output
    assert expect in lines[0], lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())
    return lines[0]


def save(tmp_path: Path, obj: Any, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def with_model(ckpt: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A shallow copy of the checkpoint with a copied state_dict (tensors shared, not mutated)."""
    out = dict(ckpt)
    out["model"] = dict(ckpt["model"])
    out.update(changes)
    return out


# --------------------------------------------------------------------------------------------------
# unreadable files


def test_missing_file(tmp_path: Path) -> None:
    export_fails(tmp_path, tmp_path / "nope.pth", expect="no such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    export_fails(tmp_path, tmp_path / "adir", expect="is a directory")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    export_fails(tmp_path, tmp_path / "empty.pth", expect="is empty")


def test_truncated_file(tmp_path: Path, micro: Path) -> None:
    data = (micro / "checkpoint.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    export_fails(tmp_path, tmp_path / "cut.pth", expect="truncated or corrupt")


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "noise.pth").write_bytes(os.urandom(4096))
    export_fails(tmp_path, tmp_path / "noise.pth", expect="not a PyTorch checkpoint")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    export_fails(tmp_path, save(tmp_path, [1, 2, 3]), expect="holds a list")


def test_dict_without_weights(tmp_path: Path) -> None:
    export_fails(tmp_path, save(tmp_path, {"epoch": 3, "note": "hi"}), expect="no 'model', 'state_dict' or 'model_ema'")


class _RunsCode:
    """Unpickling this calls os.system: the file must be refused before that can happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_code_executing_pickle_is_refused(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    payload = {"model": _RunsCode(marker)}
    path = tmp_path / "evil.pth"
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    line = export_fails(tmp_path, path, expect="refused: the file needs unpickling of")
    assert "system" in line and "could run code" in line
    assert not marker.exists(), "the pickle payload ran"


# --------------------------------------------------------------------------------------------------
# readable, but not (exactly) BHViT


def test_non_bhvit_state_dict(tmp_path: Path) -> None:
    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    export_fails(tmp_path, save(tmp_path, {"model": sd}), expect="not a BHViT state_dict")


def test_missing_keys_are_named(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    del ck["model"][CONV_BIAS], ck["model"]["classifier.bias"]
    line = export_fails(tmp_path, save(tmp_path, ck), expect="2 missing")
    assert CONV_BIAS in line and "classifier.bias" in line


def test_missing_key_needed_to_infer_the_architecture(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    del ck["model"]["vit.encoder.layerB.0.intermediate.dense.weight"]
    export_fails(tmp_path, save(tmp_path, ck), expect="vit.encoder.layerB.0.intermediate.dense.weight")


def test_many_missing_keys_are_summarized(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    gone = [k for k in ck["model"] if k.startswith("vit.encoder.layerA.1.layerscale_")]
    for k in gone:
        del ck["model"][k]
    line = export_fails(tmp_path, save(tmp_path, ck), expect=f"{len(gone)} missing")
    assert f"and {len(gone) - 5} more" in line


def test_unexpected_keys_are_named(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    ck["model"]["vit.encoder.extra_head.weight"] = torch.zeros(3)
    export_fails(tmp_path, save(tmp_path, ck), expect="1 unexpected: vit.encoder.extra_head.weight")


def test_misshaped_key_is_named(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    ck["model"][CONV_BIAS] = torch.zeros(65)
    export_fails(tmp_path, save(tmp_path, ck), expect=f"1 mis-shaped: {CONV_BIAS} (file [65], model [64])")


def test_nan_and_inf_are_named(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    bad = ["vit.layernorm.running_var", "classifier.weight"]
    for k, v in zip(bad, (float("nan"), float("inf"))):
        t = ck["model"][k].clone()
        t.view(-1)[3] = v
        ck["model"][k] = t
    line = export_fails(tmp_path, save(tmp_path, ck), expect="2 tensors hold NaN or Inf")
    assert all(k in line for k in bad)


def test_non_tensor_values_are_named(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    ck["model"][CONV_BIAS] = [0.0] * 64
    export_fails(tmp_path, save(tmp_path, ck), expect=f"1 non-tensor values (list): {CONV_BIAS}")


def test_gsb_flag_on_qd_weights_is_refused(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    args = copy.copy(micro_checkpoint["args"])
    args.gsb = True
    export_fails(
        tmp_path, save(tmp_path, with_model(micro_checkpoint, args=args)),
        expect="the training args say gsb=True but the weights hold QD attention-quantizer keys",
    )


def test_unknown_quantizer_keys_are_refused(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    ck = with_model(micro_checkpoint)
    ck["model"]["vit.encoder.layerB.0.attention.attention.att_prob_quantizer.beta"] = torch.zeros(2)
    export_fails(tmp_path, save(tmp_path, ck), expect="unknown attention quantizer key")


def test_gsb_without_config_json_asks_for_it(tmp_path: Path) -> None:
    """A GSB checkpoint stores no per-head tensor: the heads come from config.json, never a guess."""
    export_fails(
        tmp_path, official_path("micro-gsb") / "checkpoint.pth",
        expect="a GSB (--gsb) checkpoint does not record its attention head counts and its args.model "
        "'configs/BHViT_micro' is not an official config: pass --config config.json",
    )


def test_disable_layerscale_with_batchnorm_loads_and_fuses(micro_checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """--disable-layerscale drops output.layerscale and attention.output.layerscale only; the shift
    LayerScales stay. A BatchNorm model without them exports, fuses (BN folded, MLP packed) and
    equals its reference graph."""
    import numpy as np

    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import FuseReport, fuse_model
    from tests.helpers import assert_end_to_end
    from tests.passes.util import run

    args = copy.copy(micro_checkpoint["args"])
    args.disable_layerscale = True
    ck = with_model(micro_checkpoint, args=args)
    for k in [k for k in ck["model"] if k.endswith((".output.layerscale.alpha", ".output.layerscale.move"))]:
        del ck["model"][k]
    loaded = load_checkpoint(save(tmp_path, ck))
    cfg = loaded.config
    assert not cfg.layerscale and cfg.shift3 and cfg.shift5 and cfg.norm == "batchnorm"
    ref = export_reference(loaded.model)
    rep = FuseReport()
    fused = fuse_model(ref, rep)
    assert rep.counts["mlp_expand"] == sum(cfg.depths) and rep.counts["fold_epilogue"] > 0
    x = np.load(official_path("micro") / "inputs.npy")[:2]
    assert_end_to_end(run(fused, {"pixel_values": x})[0], run(ref, {"pixel_values": x})[0])


def test_multi_bit_weights_are_refused(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    args = copy.copy(micro_checkpoint["args"])
    args.weight_bits = 2
    export_fails(tmp_path, save(tmp_path, with_model(micro_checkpoint, args=args)), expect="--weight-bits=2")


@pytest.mark.parametrize("flag", ["enable_cls_token", "recu", "avg_res3", "avg_res5"])
def test_unsupported_variant_flags_are_refused(tmp_path: Path, micro_checkpoint: dict[str, Any], flag: str) -> None:
    args = copy.copy(micro_checkpoint["args"])
    setattr(args, flag, True)
    export_fails(tmp_path, save(tmp_path, with_model(micro_checkpoint, args=args)), expect=f"--{flag.replace('_', '-')}")


def test_entry_not_in_file(tmp_path: Path, micro: Path) -> None:
    export_fails(tmp_path, micro / "checkpoint.pth", "--entry", "model_ema", expect="no 'model_ema' entry")


def test_config_json_that_disagrees(tmp_path: Path, micro: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text((micro / "config.json").read_text().replace('"patch_size": 4', '"patch_size": 16'))
    export_fails(tmp_path, micro / "checkpoint.pth", "--config", str(cfg), expect="patch_size: config says 16")


def test_config_json_missing(tmp_path: Path, micro: Path) -> None:
    export_fails(tmp_path, micro / "checkpoint.pth", "--config", str(tmp_path / "nope.json"), expect="no such file")


def test_config_json_not_json(tmp_path: Path, micro: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text("{ not json")
    export_fails(tmp_path, micro / "checkpoint.pth", "--config", str(cfg), expect="not valid JSON")


def test_output_is_the_checkpoint_itself(tmp_path: Path, micro: Path) -> None:
    import shutil

    ckpt = tmp_path / "c.pth"
    shutil.copy(micro / "checkpoint.pth", ckpt)
    before = ckpt.read_bytes()
    result = run_cli("to-onnx", str(ckpt), "-o", str(ckpt), "--reference")
    assert result.exit_code == 2 and "is the checkpoint itself" in result.stderr
    assert ckpt.read_bytes() == before


def test_output_not_writable(tmp_path: Path, micro: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(blocker / "sub" / "m.onnx"), "--reference")
    assert result.exit_code == 2 and result.stderr.count("error[") == 1 and "Traceback" not in result.output


def test_fused_opset_mismatch(tmp_path: Path, micro: Path) -> None:
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(tmp_path / "m.onnx"), "--opset", "19")
    assert result.exit_code == 2 and "the fused graph is built for opset" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------------------------------
# layouts that load: DDP prefixes, bare state_dicts, other entries (library level: no export needed)


def _same_weights(loaded: Any, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(loaded.model.state_dict()[k], v) for k, v in sd.items())


def test_ddp_module_prefix_is_stripped(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    sd = micro_checkpoint["model"]
    path = save(tmp_path, {"model": {f"module.{k}": v for k, v in sd.items()}, "args": micro_checkpoint["args"]})
    loaded = load_checkpoint(path)
    assert loaded.stripped_prefix == "module." and _same_weights(loaded, sd)
    assert "'module.' prefix stripped" in loaded.summary


def test_bare_state_dict(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    sd = micro_checkpoint["model"]
    loaded = load_checkpoint(save(tmp_path, sd))
    assert loaded.entry == "bare" and loaded.args is None and _same_weights(loaded, sd)


def test_state_dict_entry(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    sd = micro_checkpoint["model"]
    loaded = load_checkpoint(save(tmp_path, {"state_dict": sd, "epoch": 1}))
    assert loaded.entry == "state_dict" and _same_weights(loaded, sd)


def test_model_ema_entry(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    """auto prefers ``model``; ``--entry model_ema`` takes the EMA copy; auto falls back to it."""
    sd = micro_checkpoint["model"]
    ema = dict(sd, **{"classifier.bias": sd["classifier.bias"] + 1.0})
    both = save(tmp_path, with_model(micro_checkpoint, model_ema=ema), "both.pth")
    auto = load_checkpoint(both)
    assert auto.entry == "model" and _same_weights(auto, sd)
    picked = load_checkpoint(both, entry="model_ema")
    assert picked.entry == "model_ema" and _same_weights(picked, ema)
    only = save(tmp_path, {"model_ema": ema, "args": micro_checkpoint["args"]}, "only_ema.pth")
    assert load_checkpoint(only).entry == "model_ema"


# --------------------------------------------------------------------------------------------------
# reproducibility


def test_same_checkpoint_gives_identical_bytes(tmp_path: Path, micro: Path, reference_onnx: Any) -> None:
    """Later stages key on the ONNX file's bytes, so two exports must be byte-identical.

    The first export is the session's (library call), the second goes through the CLI.
    """
    first = reference_onnx("micro")
    second = tmp_path / "again.onnx"
    result = run_cli("to-onnx", str(micro / "checkpoint.pth"), "-o", str(second), "--reference")
    assert result.exit_code == 0, result.output
    assert second.read_bytes() == first.read_bytes()
    assert "inferred: BHViT from entry 'model'" in result.stdout and "wrote " in result.stdout


def test_namespace_args_are_kept(micro: Path) -> None:
    loaded = load_checkpoint(micro / "checkpoint.pth")
    assert isinstance(loaded.args, argparse.Namespace) and loaded.args.replace_ln_bn


def test_half_precision_weights_load_as_float32(tmp_path: Path, micro_checkpoint: dict[str, Any]) -> None:
    sd = {k: v.half() if v.is_floating_point() else v for k, v in micro_checkpoint["model"].items()}
    loaded = load_checkpoint(save(tmp_path, {"model": sd}))
    got = loaded.model.state_dict()["classifier.weight"]
    assert got.dtype == torch.float32 and torch.equal(got, sd["classifier.weight"].float())


def test_demo_checkpoint_is_deterministic_and_loads(tmp_path: Path) -> None:
    """examples/01: the paper's Tiny in the official format; the same seed gives the same bytes."""
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("make_checkpoint", REPO / "examples/01_demo_checkpoint/make_checkpoint.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths = [tmp_path / d / "demo.pth" for d in ("a", "b")]
    for p in paths:
        assert mod.main(["-o", str(p), "--images", "1"]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert (tmp_path / "a" / "demo.inputs.npy").read_bytes() == (tmp_path / "b" / "demo.inputs.npy").read_bytes()
    loaded = load_checkpoint(paths[0])
    assert loaded.summary.startswith("BHViT-tiny (fp downsampling) from entry 'model'")
    assert isinstance(loaded.args, argparse.Namespace) and loaded.args.shift3 and not loaded.args.gsb


_SMALL = {"model": {"a.weight": torch.arange(9.0).reshape(3, 3), "b": torch.zeros(2)}, "args": argparse.Namespace(x=1)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_bytes_only_raise_bhvit_errors(tmp_path: Path, data: st.DataObject) -> None:
    """Flipped or cut bytes anywhere: always a one-line user error, never a stray exception."""
    path = tmp_path / "small.pth"
    if not path.exists():
        torch.save(_SMALL, path)
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(1, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(BhvitError) as info:
        load_checkpoint(damaged)  # even an intact-looking load fails: these weights are not BHViT
    assert "\n" not in str(info.value)


def test_exporter_failure_is_one_line(tmp_path: Path, micro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore details")

    monkeypatch.setattr(torch.onnx, "export", broken)
    export_fails(tmp_path, micro / "checkpoint.pth", expect="torch.onnx.export failed: RuntimeError: Unsupported")
