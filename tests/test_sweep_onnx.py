"""Reliability sweep (issue #7): ONNX files of unknown origin given to ``inspect`` and ``compile``.

Every case is one line ``error[<stage>]: ...`` and exit 2 (never a traceback, never exit 3), decided before
TVM builds or onnxruntime runs anything, and nothing is left at ``-o``. The table of these cases is
in ``docs/errors.md``; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bhvit_export.cli import cli
from tests.helpers import is_error_line, official_path

COMMANDS = ("inspect", "compile")


def run(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the stderr lines that are not ``... progress``."""
    res = CliRunner().invoke(cli, list(args))
    err = [line for line in res.stderr.splitlines() if not line.startswith("... ")]
    return res.exit_code, res.stdout, err


def one_error(code: int, err: list[str], *needles: str, exit_code: int = 2) -> None:
    """Exactly one ``error:`` line holding every needle, with the expected exit code."""
    assert code == exit_code, err
    assert len(err) == 1 and is_error_line(err[0]), err
    for n in needles:
        assert n in err[0], (n, err[0])


def check(cmd: str, model: Path, tmp_path: Path, *extra: str) -> tuple[int, str, list[str]]:
    """Run ``cmd`` on ``model``; for compile, assert nothing (not even a temp) appeared beside ``-o``."""
    if cmd == "inspect":
        return run("inspect", str(model), *extra)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    res = run("compile", str(model), "-o", str(out_dir / "b"), "--no-native", *extra)
    if res[0] != 0:
        assert list(out_dir.iterdir()) == [], "a failed compile left files behind"
    return res


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _relu_model(shape: list[Any], out_shape: list[Any] | None = None) -> onnx.ModelProto:
    """The smallest valid ONNX that is not ours: y = Relu(x)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def micro_proto(fused_onnx: Callable[[str], Path]) -> onnx.ModelProto:
    """A fresh copy of the fused micro model (the session file stays untouched)."""
    return onnx.load(str(fused_onnx("micro")))


# --------------------------------------------------------------------------------------------------
# not ONNX, truncated


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("content", [b"", b"not onnx at all\n", bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8))],
                         ids=["empty", "text", "random-bytes"])
def test_not_onnx(cmd: str, content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    code, _, err = check(cmd, bad, tmp_path)
    one_error(code, err, str(bad), "ONNX")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_truncated_onnx(cmd: str, fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    data = fused_onnx("micro").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    code, _, err = check(cmd, cut, tmp_path)
    one_error(code, err, str(cut), "not an ONNX model")


def test_missing_model_file(tmp_path: Path) -> None:
    for cmd in COMMANDS:
        code, _, err = check(cmd, tmp_path / "nope.onnx", tmp_path)
        one_error(code, err, "no such file")


# --------------------------------------------------------------------------------------------------
# valid ONNX that is not ours


def test_inspect_foreign_model_is_a_census(tmp_path: Path) -> None:
    """inspect counts any valid ONNX (it is a census, it runs nothing): exit 0, no binary ops."""
    path = _save(_relu_model([1, 4]), tmp_path / "relu.onnx")
    code, out, err = run("inspect", str(path))
    assert code == 0, err
    assert "Relu 1" in out and "binary ops       none" in out


@pytest.mark.parametrize(
    "shape, out_shape, says",
    [
        ([1, 4], None, "expected float32 [N, 3, S, S]"),
        (["N", 1, 32, 32], None, "expected float32 [N, 3, S, S]"),
        (["N", 3, 32, 16], None, "expected float32 [N, 3, S, S]"),
        (["N", 3, "H", "W"], None, "expected float32 [N, 3, S, S]"),
        (["N", 3, 32, 32], None, "expected float32 [N, classes]"),
    ],
    ids=["vector-input", "one-channel", "not-square", "symbolic-size", "image-output"],
)
def test_compile_refuses_a_model_that_is_not_an_image_classifier(shape: list[Any], out_shape: Any, says: str, tmp_path: Path) -> None:
    path = _save(_relu_model(shape, out_shape), tmp_path / "foreign.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "not a BHViT image model", says)


def test_compile_refuses_two_inputs(tmp_path: Path) -> None:
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 32, 32]) for n in "ab")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "expected one input and one output")


# --------------------------------------------------------------------------------------------------
# ops outside our set


def _with_foreign_op(proto: onnx.ModelProto, domain: str, op_type: str) -> onnx.ModelProto:
    """The micro model with its first standard node renamed to ``domain.op_type``.

    The golden metadata is dropped so that compile would fall back to onnxruntime on the model:
    the op check must come before that (onnxruntime must never run an op set we do not know).
    """
    node = next(n for n in proto.graph.node if n.domain == "" and n.op_type not in ("Constant",))
    node.domain, node.op_type = domain, op_type
    if domain not in {o.domain for o in proto.opset_import}:
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    keep = [p for p in proto.metadata_props if p.key != "bhvit.golden"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    return proto


@pytest.mark.parametrize("domain, op_type", [("evil.example", "Exec"), ("bhvit", "BinaryMystery")],
                         ids=["foreign-domain", "unknown-bhvit-op"])
def test_ops_outside_our_set(domain: str, op_type: str, micro_proto: onnx.ModelProto, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.compile as compile_mod

    def no_ort(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("onnxruntime ran a model with unknown ops")

    monkeypatch.setattr(compile_mod, "_ort_golden", no_ort)
    path = _save(_with_foreign_op(micro_proto, domain, op_type), tmp_path / "foreign-op.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "error[compile]: cannot lower to TVM: unsupported op types", f"{domain}.{op_type}")
    code, out, err = run("inspect", str(path))
    if domain != "bhvit":  # shape inference stops at the foreign op: the census says which op hides it
        one_error(code, err, "cannot infer the shape", f"ops outside ONNX and bhvit ({domain}.{op_type})")


# --------------------------------------------------------------------------------------------------
# absurd shapes and sizes


def _set_input_dims(proto: onnx.ModelProto, dims: list[Any]) -> onnx.ModelProto:
    shape = proto.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, dims):
        d.Clear()
        if isinstance(v, int):
            d.dim_value = v
        else:
            d.dim_param = v
    return proto


def test_absurd_image_size_is_refused_before_tvm(micro_proto: onnx.ModelProto, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.targets.importer as importer

    def no_import(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("TVM import reached")

    monkeypatch.setattr(importer, "import_fused", no_import)
    path = _save(_set_input_dims(micro_proto, ["batch", 3, 100000, 100000]), tmp_path / "huge.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "[batch, 3, 100000, 100000]", "beyond the supported 4096")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_negative_dimension(cmd: str, micro_proto: onnx.ModelProto, tmp_path: Path) -> None:
    path = _save(_set_input_dims(micro_proto, ["batch", 3, -224, 224]), tmp_path / "neg.onnx")
    code, _, err = check(cmd, path, tmp_path)
    one_error(code, err, "negative dimension", "pixel_values")


def test_huge_batch_is_refused_before_allocating(fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    code, _, err = check("compile", fused_onnx("micro"), tmp_path, "--batch", "100000")
    one_error(code, err, "--batch 100000", "GiB per input")


def test_golden_metadata_asking_for_a_huge_allocation(micro_proto: onnx.ModelProto, tmp_path: Path) -> None:
    """``bhvit.golden`` says how many inputs to regenerate: a hostile count must not be allocated."""
    import json

    prop = next(p for p in micro_proto.metadata_props if p.key == "bhvit.golden")
    meta = json.loads(prop.value)
    meta["count"] = 10**9
    prop.value = json.dumps(meta)
    path = _save(micro_proto, tmp_path / "greedy.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "bhvit.golden", "out of range")


def test_damaged_golden_metadata(micro_proto: onnx.ModelProto, tmp_path: Path) -> None:
    prop = next(p for p in micro_proto.metadata_props if p.key == "bhvit.golden")
    prop.value = prop.value[: len(prop.value) // 2]
    path = _save(micro_proto, tmp_path / "damaged.onnx")
    code, _, err = check("compile", path, tmp_path)
    one_error(code, err, "bhvit.golden metadata is damaged")


# --------------------------------------------------------------------------------------------------
# external data: an ONNX may name files to read its weights from


@pytest.mark.parametrize("where", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("cmd", COMMANDS)
def test_external_data_outside_the_model_folder(cmd: str, where: str, tmp_path: Path) -> None:
    """A weight stored 'in' ../../etc/passwd, /etc/passwd, or a link to it is refused, not read."""
    folder = tmp_path / "model"
    folder.mkdir()
    location = {"relative": "../../../../../../etc/passwd", "absolute": "/etc/passwd", "symlink": "weights.bin"}[where]
    if where == "symlink":
        os.symlink("/etc/passwd", folder / "weights.bin")
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        e = w.external_data.add()
        e.key, e.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Slice", ["f", "s", "e", "a"], ["g"]),
             helper.make_node("Add", ["g", "w"], ["y"])]
    consts = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 4), ("a", 1))]
    graph = helper.make_graph(nodes, "ext", [x], [y], initializer=[w, *consts])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "ext.onnx")
    code, _, err = check(cmd, path, tmp_path)
    one_error(code, err, "not an ONNX model")
    assert "root:" not in " ".join(err)


# --------------------------------------------------------------------------------------------------
# user golden files given to compile


@pytest.mark.parametrize("case", ["nan-inputs", "nan-outputs", "wrong-size", "wrong-classes", "lying-header", "pickle"])
def test_bad_user_golden_files(case: str, fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    src = official_path("micro")
    x = np.load(src / "inputs.npy")
    y = np.load(src / "logits.npy")
    says = {"nan-inputs": "golden inputs (user) contain NaN", "nan-outputs": "golden outputs (user) contain NaN",
            "wrong-size": "the model takes [N, 3, 224, 224]", "wrong-classes": "the model returns [N, 10]",
            "lying-header": "not a readable .npy array", "pickle": "not a readable .npy array"}[case]
    xi, yo = tmp_path / "x.npy", tmp_path / "y.npy"
    if case == "nan-inputs":
        x = x.copy()
        x[0, 0, 0, 0] = np.nan
    elif case == "nan-outputs":
        y = y.copy()
        y[1, 2] = np.nan
    elif case == "wrong-size":
        x = x[:, :, :112, :112].copy()
    elif case == "wrong-classes":
        y = y[:, :7].copy()
    np.save(xi, x)
    np.save(yo, y)
    if case == "lying-header":  # the header claims 4e12 floats, the file holds a few
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 3, 1000, 1000), }"
        header += b" " * (118 - len(header)) + b"\n"
        xi.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)
    elif case == "pickle":  # an object array: loading it would unpickle
        np.save(xi, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = check("compile", fused_onnx("micro"), tmp_path, "--golden-inputs", str(xi), "--golden-outputs", str(yo))
    one_error(code, err, says)
