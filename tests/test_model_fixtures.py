"""The PyTorch model and the reference ONNX against the official code's outputs.

Three levels, as the spec asks: whole model vs official logits (end to end), every recorded module
teacher-forced (fed the official input of that module, compared to 1e-5 of its scale: this is where
a wrong eps, padding or threshold shows), and the reference ONNX in onnxruntime (end to end).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import OFFICIAL, OFFICIAL_NAMES, assert_end_to_end, assert_module_close, input_sets

# --------------------------------------------------------------------------------------------------
# (i) whole model


def test_torch_model_matches_official_logits(official: Path, loaded_official: Callable[[str], Any]) -> None:
    model = loaded_official(official.name).model
    for name, x, logits in input_sets(official):  # random and (where shipped) structured images
        with torch.no_grad():
            got = model(torch.from_numpy(x))
        assert_end_to_end(got, logits, what=f"{official.name} {name}")


# --------------------------------------------------------------------------------------------------
# (ii) teacher-forced modules: each module gets the official input of that module.


def _index_entries() -> list[Any]:
    """One pytest param per recorded output in intermediates/index.json of each fixture."""
    params = []
    for name in OFFICIAL_NAMES:
        index = OFFICIAL / name / "intermediates" / "index.json"
        if not index.is_file():
            params.append(pytest.param(name, None, "output", marks=pytest.mark.skip(reason=f"no {index}")))
            continue
        for e in json.loads(index.read_text())["entries"]:
            if e["what"] == "input":  # recorded inputs are what we feed, not what we check
                continue
            params.append(pytest.param(name, e["module"], e["what"], id=f"{name}:{e['module']}"))
    return params


class Recorded:
    """The official activations of the first image of one fixture, with the model's block order."""

    def __init__(self, folder: Path, model: Any) -> None:
        self.folder = folder
        self.model = model
        self.files = {
            (e["module"], e["what"]): folder / e["file"]
            for e in json.loads((folder / "intermediates" / "index.json").read_text())["entries"]
        }
        cfg = model.config
        # The forward order of top-level modules; each one's input is its predecessor's output.
        self.order = ["vit.embeddings"]
        a = b = 0
        for stage, depth in enumerate(cfg.depths):
            for _ in range(depth):
                if stage < 2:
                    self.order.append(f"vit.encoder.layerA.{a}")
                    a += 1
                else:
                    self.order.append(f"vit.encoder.layerB.{b}")
                    b += 1
            if stage < 3:
                self.order.append(f"vit.encoder.patch_embed{stage + 1}")

    def __call__(self, module: str, what: str = "output") -> torch.Tensor:
        key = (module, "output[0]") if (module, what) not in self.files else (module, what)
        if key not in self.files:
            pytest.skip(f"{module} ({what}) is not recorded in this fixture")
        return torch.from_numpy(np.load(self.files[key]))

    def block_input(self, block: str) -> torch.Tensor:
        i = self.order.index(block)
        if i == 0:
            return torch.from_numpy(np.load(self.folder / "inputs.npy")[:1])
        return self(self.order[i - 1])

    def sub(self, name: str) -> Any:
        return self.model.get_submodule(name)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).transpose(1, 2)


def _image(t: torch.Tensor) -> torch.Tensor:
    b, n, c = t.shape
    s = math.isqrt(n)
    return t.transpose(1, 2).reshape(b, c, s, s)


def _mixed(rec: Recorded, attn: str, p: str, z: torch.Tensor) -> torch.Tensor:
    """``mixed_p = rprelu_p(norm_p(dense_p(z + move_p)) + z)`` with our modules (not recorded)."""
    m = rec.sub(attn)
    dense = {"q": m.query, "k": m.key, "v": m.value}[p]
    return getattr(m, f"rprelu{p}")(getattr(m, f"norm{p}")(dense(z + getattr(m, f"move{p}"))) + z)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def _run(rec: Recorded, module: str) -> torch.Tensor:
    """Run ``module`` on its official input (derived from recorded outputs where it is not recorded)."""
    if module in rec.order:
        return rec.sub(module)(rec.block_input(module))
    if module == "vit.embeddings.patch_embeddings":
        return rec.sub(module)(rec.block_input("vit.embeddings"))
    if module == "vit.layernorm":
        return rec.sub(module)(_tokens(rec(rec.order[-1])))
    if module.startswith("vit.encoder.patch_embed") and module.endswith(".proj"):
        pe = module.rsplit(".", 1)[0]  # binary downsampling: proj(image(norm0(tokens(x))) + move)
        m, x = rec.sub(pe), rec.block_input(pe)
        return m.proj(_image(m.norm0(_tokens(x))) + m.move)

    block = ".".join(module.split(".")[:4])  # vit.encoder.layerX.i
    part = module[len(block) + 1 :]
    x = rec.block_input(block)
    lnb = rec(f"{block}.layernorm_before")
    attn = f"{block}.attention.attention"
    if part == "layernorm_before":
        return rec.sub(module)(_tokens(x))
    if part in ("GC", "attention", "attention.attention"):
        return rec.sub(module)(_image(lnb))
    if part.startswith("GC.cov"):
        return rec.sub(module)(rec.sub(f"{block}.GC.move")(_image(lnb)))
    if part == "layernorm_after":
        h = _tokens(rec(f"{block}.GC") + x) if "layerA" in block else _tokens(x) + rec(f"{block}.attention")
        return rec.sub(module)(h)
    if part == "intermediate":
        return rec.sub(module)(rec(f"{block}.layernorm_after"))
    if part == "output":
        return rec.sub(module)(rec(f"{block}.intermediate"))
    if part == "attention.output":
        return rec.sub(module)(_tokens(rec(attn)))
    if part == "attention.attention.token_FA":
        # token_FA has no forward of its own in our model: capture its LayerNorm's output.
        seen: list[torch.Tensor] = []
        hook = rec.sub(f"{module}.norm").register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            rec.sub(attn)(_image(lnb))
        finally:
            hook.remove()
        return seen[0]
    z = rec(f"{attn}.token_FA")
    if part == "attention.attention.query":
        return rec.sub(module)(z + rec.sub(attn).moveq)
    if part == "attention.attention.rpreluq":
        m = rec.sub(attn)
        return m.rpreluq(m.normq(rec(f"{attn}.query")) + z)
    if part == "attention.attention.att_prob_quantizer":
        return rec.sub(module)(rec(module, "input"))
    if part == "attention.attention.norm_context":
        m = rec.sub(attn)
        v = torch.sign(_mixed(rec, attn, "v", z) + m.movev2)
        ctx = torch.matmul(rec(f"{attn}.att_prob_quantizer"), _heads(v, m.heads))
        b, h, n, d = ctx.shape
        return m.norm_context(ctx.permute(0, 2, 1, 3).reshape(b, n, h * d))
    pytest.fail(f"no teacher-forcing rule for {module}: add one to _run")


#: A sign input within this fraction of its tensor's scale is a tie: rounding alone can flip it.
TIE = 1e-6


@contextlib.contextmanager
def _ties_flipped(flipped: list[int]):  # noqa: ANN202
    """Flip the q/k/v signs whose input is a tie (|x| <= TIE * max|x|), counting them.

    The spec allows a sign *inside* a teacher-forced module to differ from the official run only
    where its input is within rounding distance of 0; this shows that a mismatch is such a flip.
    """
    from bhvit_export.model.blocks import SelfAttention

    orig = SelfAttention._project

    def project(self, z, p, dense):  # noqa: ANN001, ANN202
        mixed, s = orig(self, z, p, dense)
        x = mixed + getattr(self, f"move{p}2")
        tie = x.abs() <= TIE * max(1.0, float(x.abs().max()))
        flipped.append(int(tie.sum()))
        return mixed, torch.where(tie, -s, s)

    SelfAttention._project = project  # type: ignore[method-assign]
    try:
        yield
    finally:
        SelfAttention._project = orig  # type: ignore[method-assign]


@pytest.mark.parametrize(("fixture", "module", "what"), _index_entries())
def test_module_teacher_forced(
    fixture: str, module: str | None, what: str, loaded_official: Callable[[str], Any],
    record_property: Callable[[str, Any], None],
) -> None:
    loaded = loaded_official(fixture)
    rec = Recorded(OFFICIAL / fixture, loaded.model)
    with torch.no_grad():
        got = _run(rec, module)  # type: ignore[arg-type]
    try:
        assert_module_close(got, rec(module, what), what=f"{fixture}:{module}")  # type: ignore[arg-type]
    except AssertionError as first:
        if ".layerB." not in f"{module}." or "att_prob_quantizer" in str(module):
            raise
        flipped: list[int] = []
        with torch.no_grad(), _ties_flipped(flipped):
            got = _run(rec, module)  # type: ignore[arg-type]
        if not sum(flipped):
            raise
        try:
            assert_module_close(got, rec(module, what), what=f"{fixture}:{module} (ties flipped)")  # type: ignore[arg-type]
        except AssertionError:
            raise first from None
        record_property("tie_sign_flips", sum(flipped))
        print(f"{fixture}:{module}: matches once {sum(flipped)} tie sign input(s) (|x| <= {TIE:g} of scale) are flipped")


def test_attention_scores_teacher_forced(micro: Path, loaded_official: Callable[[str], Any]) -> None:
    """softmax(q'k'^T/sqrt(d))*3, the recorded input of the QD quantizer, from the recorded q and
    our k (k is not recorded): checks the binary scores and the softmax scaling."""
    rec = Recorded(micro, loaded_official("micro").model)
    attn = "vit.encoder.layerB.0.attention.attention"
    m = rec.sub(attn)
    z = rec(f"{attn}.token_FA")
    with torch.no_grad():
        q = torch.sign(rec(f"{attn}.rpreluq") + m.moveq2)
        k = torch.sign(_mixed(rec, attn, "k", z) + m.movek2)
        d = q.shape[-1] // m.heads
        scores = torch.matmul(_heads(q, m.heads), _heads(k, m.heads).transpose(-1, -2)) / math.sqrt(d)
        got = F.softmax(scores, dim=-1) * 3
    assert_module_close(got, rec(f"{attn}.att_prob_quantizer", "input"))


# --------------------------------------------------------------------------------------------------
# (iii) the reference ONNX in onnxruntime


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_reference_onnx_matches_official_logits(official: Path, reference_onnx: Callable[[str], Path]) -> None:
    sess = _session(reference_onnx(official.name))
    for name, x, logits in input_sets(official):
        (got,) = sess.run(None, {"pixel_values": x})
        assert_end_to_end(got, logits, what=f"{official.name} {name}")


def test_reference_onnx_dynamic_batch(micro: Path, reference_onnx: Callable[[str], Path]) -> None:
    sess = _session(reference_onnx("micro"))
    x = np.load(micro / "inputs.npy")
    ref = np.load(micro / "logits.npy")
    (one,) = sess.run(None, {"pixel_values": x[:1]})
    (four,) = sess.run(None, {"pixel_values": x})
    assert one.shape == (1, ref.shape[1]) and four.shape == ref.shape
    assert_end_to_end(one, ref[:1])
    assert_end_to_end(four, ref)


def test_reference_onnx_is_valid_and_plain(micro: Path, reference_onnx: Callable[[str], Path]) -> None:
    import onnx

    path = reference_onnx("micro")
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    opset = {o.domain: o.version for o in proto.opset_import}
    assert opset.get("", opset.get("ai.onnx", 0)) >= 17
    ops = {n.op_type for n in proto.graph.node}
    assert "Sign" in ops
    assert not any(o.domain not in ("", "ai.onnx") for o in proto.opset_import), "reference uses only standard ops"
