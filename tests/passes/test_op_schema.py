"""The op schema (``passes/op_schema.py``): one entry per ``bhvit`` op, read by passes, census and converters.

* every entry agrees with its ONNX function body (inputs, outputs, attribute names, in order);
* every ``bhvit`` node of the fused micro fixture validates against its entry, and its cost by
  name equals the census's per-op BOPs;
* a node without a required input, with a wrong attribute type or an out-of-range value is one
  clear ``OpSchemaError`` naming what is wrong;
* nodes are built through the entry: inputs by name in the op's order, attributes coerced.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from bhvit_export.census import census
from bhvit_export.passes.op_schema import DOMAIN, OP_TYPES, SCHEMAS, OpSchemaError, check_against_bodies, schema_of, validate_model


@lru_cache(maxsize=1)
def _fused_micro() -> onnx.ModelProto:
    from bhvit_export.checkpoint import load_checkpoint
    from bhvit_export.export.reference import export_reference
    from bhvit_export.passes.pipeline import fuse_model
    from tests.conftest import official_path

    path = official_path("micro")
    if not path.is_dir():
        pytest.skip(f"official fixtures not found at {path}")
    return fuse_model(export_reference(load_checkpoint(path / "checkpoint.pth").model))


def test_entries_agree_with_their_function_bodies() -> None:
    check_against_bodies()
    assert OP_TYPES == tuple(SCHEMAS)
    assert all(s.domain == DOMAIN for s in SCHEMAS.values())


def test_converters_cover_exactly_the_schema() -> None:
    pytest.importorskip("tvm")
    from bhvit_export.targets.converters import CONVERTERS

    assert set(CONVERTERS) == set(SCHEMAS)


def test_every_fused_micro_node_validates_and_costs_by_name() -> None:
    fused = _fused_micro()
    nodes = [n for n in fused.graph.node if n.domain == DOMAIN]
    assert {n.op_type for n in nodes} >= {"BinaryLinear", "BinaryConv2d", "BinaryAttentionScores", "QDAttentionContext"}
    validate_model(fused)  # raises on the first node that does not fit
    by_node = {c["node"]: c["bops"] for c in census(fused).per_op_cost}
    for n in nodes:
        call = SCHEMAS[n.op_type].call(n)
        assert list(call.inputs.values()) == list(n.input), n.name
        assert by_node[n.name] > 0


def _linear_node(**changes) -> onnx.NodeProto:
    inputs = changes.pop("inputs", ["x", "s", "w", "sc", "b"])
    attrs = changes.pop("attrs", {"in_features": 64})
    return helper.make_node("BinaryLinear", inputs, ["y"], name="n", domain=DOMAIN, **attrs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["x", "s", "w", "sc"], "lacks its input 'bias' (input 5 of BinaryLinear: x, shift, w_bits, scale, bias)"),
        (["x", "s", "", "sc", "b"], "lacks its input 'w_bits' (input 3 of BinaryLinear"),
        (["x", "s", "w", "sc", "b", "extra"], "has 6 inputs and 1 outputs, expected 5 and 1"),
    ],
)
def test_missing_required_input_is_one_clear_error(inputs: list[str], message: str) -> None:
    with pytest.raises(OpSchemaError) as err:
        SCHEMAS["BinaryLinear"].validate(_linear_node(inputs=inputs), "BinaryLinear node 'n'")
    assert message in str(err.value)
    if len(inputs) < 5:  # reading it by name is the same error (converters, census)
        with pytest.raises(OpSchemaError, match="lacks its input"):
            SCHEMAS["BinaryLinear"].named(inputs)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "lacks its attribute 'in_features'"),
        ({"in_features": 2.0}, "attribute 'in_features' is of type 1, expected INT"),
        ({"in_features": 0}, "attribute 'in_features' is 0, out of range"),
    ],
)
def test_bad_attribute_is_one_clear_error(attrs: dict, message: str) -> None:
    with pytest.raises(OpSchemaError, match=message):
        SCHEMAS["BinaryLinear"].validate(_linear_node(attrs=attrs), "BinaryLinear node 'n'")


def test_building_through_the_entry_orders_and_coerces() -> None:
    s = SCHEMAS["BinaryConv2d"]
    named = {"bias": "b", "x": "x", "scale": "sc", "w_bits": "w", "shift": "s"}
    assert s.positional(named) == ["x", "s", "w", "sc", "b"]
    attrs = s.attributes(in_features=np.int64(9), group=1, dilations=(1, 1), pads=[0, 0, 0, 0], strides=[1, 1],
                         kernel_shape=[np.int64(3), 3])
    assert list(attrs) == ["kernel_shape", "strides", "pads", "dilations", "group", "in_features"]
    assert attrs["kernel_shape"] == [3, 3] and type(attrs["in_features"]) is int
    with pytest.raises(ValueError, match="needs its input bias"):
        s.positional({k: v for k, v in named.items() if k != "bias"})
    with pytest.raises(ValueError, match="no input bogus"):
        s.positional({**named, "bogus": "z"})
    with pytest.raises(ValueError, match="needs its attribute group"):
        s.attributes(in_features=9, dilations=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1], kernel_shape=[3, 3])


def test_schema_of_is_domain_scoped() -> None:
    assert schema_of("BinaryLinear") is SCHEMAS["BinaryLinear"]
    assert schema_of("BinaryLinear", "com.other") is None
    assert schema_of("Relu", "") is None


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(OP_TYPES), data=st.data())
def test_named_then_positional_round_trips(op: str, data: st.DataObject) -> None:
    """Reading a node's inputs by name and writing them back gives the same inputs in the same order."""
    s = SCHEMAS[op]
    names = [f"t{i}_{data.draw(st.integers(0, 9))}" for i in range(len(s.inputs))]
    assert s.positional(s.named(names)) == names


def test_inspect_ops_shows_the_entries_of_the_ops_used(tmp_path) -> None:
    """``inspect --ops`` adds the schema of each bhvit op the model uses; without it the output is unchanged."""
    import json

    from click.testing import CliRunner

    from bhvit_export.cli import cli

    path = tmp_path / "fused.onnx"
    onnx.save(_fused_micro(), str(path))
    plain = CliRunner().invoke(cli, ["inspect", str(path)])
    shown = CliRunner().invoke(cli, ["inspect", str(path), "--ops"])
    assert plain.exit_code == shown.exit_code == 0, shown.output
    assert shown.output.startswith(plain.output.rstrip("\n"))
    assert "bhvit.BinaryLinear v1" in shown.output and "(x, shift, w_bits, scale, bias) -> (y)" in shown.output
    assert "GSBAttentionContext" not in shown.output  # micro is a QD model
    data = json.loads(CliRunner().invoke(cli, ["inspect", str(path), "--ops", "--json"]).output)
    assert data["op_schemas"]["QDAttentionContext"]["inputs"][3]["name"] == "thresholds"
    assert "op_schemas" not in json.loads(CliRunner().invoke(cli, ["inspect", str(path), "--json"]).output)


def test_docs_op_table_lists_the_schema_inputs() -> None:
    """``docs/packing.md``'s op table names each op's inputs and attributes in the schema's order."""
    import re

    from tests.helpers import REPO

    rows = {}
    for line in (REPO / "docs" / "packing.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[0].strip("`") in SCHEMAS:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(SCHEMAS)
    for op, (_, inputs, attrs, _) in rows.items():
        names = [re.match(r"`(\w+)", part.strip()).group(1) for part in re.split(r",\s*(?=`)", inputs)]
        assert names == list(SCHEMAS[op].input_names), op
        for a in SCHEMAS[op].attrs:
            assert a.name in attrs, (op, a.name)


def test_schema_and_census_load_no_compiler() -> None:
    """The schema is core: validating and costing a fused file needs neither torch nor TVM (nor graphsurgeon)."""
    import subprocess
    import sys

    from tests.helpers import REPO

    code = ("import sys, bhvit_export.passes.op_schema, bhvit_export.census, bhvit_export.op_attributes; "
            "print(sorted(m for m in ('torch', 'tvm', 'onnx_graphsurgeon', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
