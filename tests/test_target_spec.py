"""``--target`` resolution (``targets/target_spec.py``): names, tags, JSON, and one-line errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tvm")

from bhvit_export.errors import TargetError  # noqa: E402
from bhvit_export.targets.target_spec import resolve  # noqa: E402


@pytest.mark.parametrize(
    "name, arch, device, cross",
    [
        ("x86_64", "x86_64", "cpu", False),
        ("aarch64", "aarch64", "cpu", True),
        ("jetson-orin", "aarch64", "cuda", True),
        ("cuda-sm90", "x86_64", "cuda", True),
        ("raspberry-pi/4b-aarch64", "aarch64", "cpu", True),
        ("nvidia/jetson-orin-nano", "aarch64", "cuda", True),
        ('{"kind": "llvm", "mcpu": "haswell"}', "x86_64", "cpu", False),
    ],
)
def test_resolves(name: str, arch: str, device: str, cross: bool) -> None:
    spec = resolve(name)
    assert (spec.arch, spec.device, spec.is_cross) == (arch, device, cross)
    json.dumps(spec.to_json())  # the manifest must be able to store it


def test_mcpu_and_orin_host() -> None:
    assert str(resolve("aarch64", mcpu="cortex-a76").target.attrs["mcpu"]) == "cortex-a76"
    assert str(resolve("x86_64", mcpu="haswell").target.attrs["mcpu"]) == "haswell"
    assert resolve("jetson-orin").target.arch == "sm_87"
    assert str(resolve("jetson-orin").host.attrs["mcpu"]) == "cortex-a78"
    assert resolve("cuda-sm90").target.arch == "sm_90" and resolve("cuda-sm80").target.arch == "sm_80"


def test_json_file(tmp_path) -> None:
    p = tmp_path / "t.json"
    p.write_text('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}')
    assert resolve(str(p)).arch == "aarch64"


@pytest.mark.parametrize(
    "name, mcpu, says",
    [
        ("nosuch", None, "unknown target"),
        ("foo/bar", None, "unknown TVM target tag"),
        ("{bad", None, "not valid JSON"),
        ('{"kind": "opencl"}', None, "not supported"),
        ('{"kind": "llvm", "mtriple": "armv7-linux-gnueabihf"}', None, "32-bit Arm"),
        ("jetson-orin", "cortex-a72", "does not apply"),
        ("raspberry-pi/4b-aarch64", "cortex-a72", "--mcpu applies"),
        ("x86_64", "notacpu", None),
        ("/no/such.json", None, "no such file"),
    ],
)
def test_errors_are_one_line(name: str, mcpu, says) -> None:
    try:
        spec = resolve(name, mcpu=mcpu)
    except TargetError as e:
        assert "\n" not in str(e)
        if says:
            assert says in str(e)
        return
    # LLVM accepts unknown CPU names with a warning; at least the target must say what was asked
    assert says is None and str(spec.target.attrs["mcpu"]) == mcpu
