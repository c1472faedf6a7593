"""``verify`` refuses a bundle whose CPU features the running CPU lacks, before loading its library.

A library built for ``sapphirerapids`` may use AVX512-FP16 and AMX, which a Zen 4 lacks: run there
it dies with SIGILL. The manifest records the features the build may use; ``verify`` compares them
with the CPU of the local run, of ``--native`` and of the RPC device (asked through
``bhvit.cpu_features``) and refuses with exit 2, naming what is missing, before the library is
loaded, uploaded or run. No Zen 4 is needed: ``BHVIT_PRETEND_CPU=znver4`` makes this machine report
LLVM's znver4 feature list, and the RPC case uses features the real CPU lacks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tvm")

from bhvit_export.bundle import manifest as mf  # noqa: E402
from bhvit_export.cli import cli  # noqa: E402
from bhvit_export.targets import cpu_features as cf  # noqa: E402
from bhvit_export.targets.kernels.target_info import X86_SAPPHIRERAPIDS  # noqa: E402
from bhvit_export.targets.toolchain import host_arch  # noqa: E402

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 bundles")


def _verify(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["verify", *args, "--no-torch"])
    err = "".join(line for line in res.stderr.splitlines(True) if not line.startswith("... "))
    return res.exit_code, res.stdout, err


def _edit_target(root: Path, **target: object) -> None:
    """Change the manifest's target entry (manifest.json is not hashed: it lists the hashes)."""
    obj = json.loads((root / mf.MANIFEST).read_text())
    for k, v in target.items():
        if v is None:
            obj["target"].pop(k, None)
        else:
            obj["target"][k] = v
    (root / mf.MANIFEST).write_text(json.dumps(obj))


@pytest.fixture
def spr_bundle(micro_bundle: Path, tmp_path: Path) -> Path:
    """The micro bundle, its manifest saying what a ``--mcpu sapphirerapids`` build records."""
    dst = tmp_path / "spr"
    shutil.copytree(micro_bundle, dst)
    _edit_target(dst, cpu="sapphirerapids", cpu_features=cf.target_features(X86_SAPPHIRERAPIDS))
    return dst


def test_manifest_records_the_build_cpu_features(micro_bundle: Path) -> None:
    target = mf.read_manifest(micro_bundle).target
    assert target["cpu_features"] == sorted(target["cpu_features"]) and "sse2" in target["cpu_features"]
    assert not cf.missing(target["cpu_features"], cf.host_features())  # built for this CPU: runs here
    assert "prefer-256-bit" not in target["cpu_features"]  # LLVM tuning flags are not features


@pytest.mark.parametrize("how", ["local", "native"])
def test_sapphirerapids_bundle_is_refused_on_a_zen4_before_loading(spr_bundle: Path, how: str, monkeypatch) -> None:
    import tvm

    import bhvit_export.targets.native_run

    def boom(*_a, **_k):
        raise AssertionError("the library was loaded")

    monkeypatch.setattr(tvm.runtime, "load_module", boom)
    monkeypatch.setattr(bhvit_export.targets.native_run, "run_native", boom)
    monkeypatch.setenv(cf.PRETEND_ENV, "znver4")
    code, _, err = _verify(str(spr_bundle), *(["--native"] if how == "native" else []))
    assert code == 2, err
    assert err == (
        "error[bundle]: this bundle was built for sapphirerapids and needs amx-bf16, amx-int8, amx-tile, avx512fp16, "
        "avxvnni; this CPU (znver4) lacks them; recompile with --mcpu native/--target x86_64 on this machine\n"
    )


def test_bundle_without_cpu_features_verifies_with_a_note(micro_bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(micro_bundle, old)
    _edit_target(old, cpu=None, cpu_features=None)
    code, out, err = _verify(str(old), "--runs", "0")
    assert code == 0, err
    assert "note: the manifest records no CPU features (a bundle from an older bhvit-export)" in out


def test_rpc_device_lacking_features_is_refused_before_upload(micro_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """The emulated device (this CPU, behind ``bhvit-rpc-server``) is asked for its features."""
    from bhvit_export.verify import runners
    from bhvit_export.targets.emulate import emulator

    lacking = sorted(set(cf.X86_FEATURES) - cf.host_features())[:2]
    if not lacking:
        pytest.skip("this CPU has every feature of the table")
    b = tmp_path / "b"
    shutil.copytree(micro_bundle, b)
    _edit_target(b, cpu="elsewhere", cpu_features=sorted(cf.host_features() | set(lacking)))

    def boom(*_a, **_k):
        raise AssertionError("the library was uploaded")

    monkeypatch.setattr(runners.RpcRunner, "__init__", boom)
    with emulator(host_arch()) as (host, port):
        code, _, err = _verify(str(b), "--rpc", f"{host}:{port}")
    assert code == 2, err
    assert f"needs {', '.join(lacking)}; the CPU of rpc {host}:{port} lacks them" in err and err.count("\n") == 1
