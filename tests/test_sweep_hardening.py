"""Hardening sweep (issue #12): hostile variants of the micro fixture, one class of input at a time.

The contract for every command and any input: exit 0, 1, 2, 130 or 143 (3 only for a real bug), one
``error:`` line and no traceback, nothing outside the output touched, nothing half-written. Most
cases must be refused *before* the slow steps; those tests replace the slow step with a tripwire
(``_forbid``) so that reaching it fails the test instead of costing a build. The bundle is the
session's micro bundle (built once, copied before any change). ``docs/errors.md`` lists each case
with its message; keep the two in step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from bhvit_export.cli import cli
from tests.helpers import REPO, is_error_line, official_path

pytest.importorskip("tvm")

from bhvit_export.bundle import manifest as mf  # noqa: E402


# --------------------------------------------------------------------------------------------------
# helpers


def run(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout, and the stderr lines that are not ``... progress``."""
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, res.stdout, [ln for ln in res.stderr.splitlines() if not ln.startswith("... ")]


def one_error(code: int, err: list[str], *needles: str, exit_code: int = 2) -> str:
    """Exactly one ``error:`` line (no traceback) holding every needle; returns it."""
    assert code == exit_code, err
    assert len(err) == 1 and is_error_line(err[0]), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def verify(*args: str) -> tuple[int, str, list[str]]:
    return run("verify", *args, "--no-torch", "--runs", "0")


def _forbid(monkeypatch: pytest.MonkeyPatch, *targets: tuple[Any, str]) -> None:
    """Make each (module, attribute) fail the test if called: the case must be decided before it."""
    for mod, name in targets:
        def tripwire(*_a: Any, _name: str = name, **_k: Any) -> None:
            raise AssertionError(f"{_name} was reached: the check must come before it")

        monkeypatch.setattr(mod, name, tripwire)


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model (compile, inspect) or the checkpoint (to-onnx) fails the test."""
    import bhvit_export.census as census
    import bhvit_export.checkpoint as checkpoint

    _forbid(monkeypatch, (census, "load_onnx"), (checkpoint, "load_checkpoint"))


@pytest.fixture
def bundle(micro_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(micro_bundle, dst, symlinks=True)
    return dst


def edit_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    obj = json.loads((root / mf.MANIFEST).read_text())
    change(obj)
    (root / mf.MANIFEST).write_text(json.dumps(obj))


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A compile whose TVM steps take no time (the output handling is under test, not TVM)."""
    import bhvit_export.compile as compile_mod
    import bhvit_export.targets.build
    import bhvit_export.targets.importer

    calls: list[str] = []
    monkeypatch.setattr(bhvit_export.targets.importer, "import_fused", lambda *_a, **_k: calls.append("import"))
    monkeypatch.setattr(bhvit_export.targets.build, "build", lambda *_a, **_k: calls.append("build"))
    monkeypatch.setattr(compile_mod, "_export", lambda _ex, _spec, path: path.write_bytes(b"\x7fELF stand-in"))
    return calls


# --------------------------------------------------------------------------------------------------
# serious 1: paths a manifest names (native.runner, native.libs, golden, library) must be listed files


@pytest.fixture
def trap(tmp_path: Path) -> tuple[Path, Path]:
    """A program outside the bundle that leaves a marker when it runs."""
    marker = tmp_path / "it-ran"
    prog = tmp_path / "evil.sh"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\n")
    prog.chmod(0o755)
    return prog, marker


NAMED_PATH_CASES = {
    "runner-absolute": (lambda o, prog: o["native"].__setitem__("runner", str(prog)), "points outside the bundle"),
    "runner-dotdot": (lambda o, prog: o["native"].__setitem__("runner", "../evil.sh"), "points outside the bundle"),
    "runner-unlisted": (lambda o, prog: o["native"].__setitem__("runner", "runtime/other-run"), "is not a listed (hashed) file"),
    "runner-not-a-string": (lambda o, prog: o["native"].__setitem__("runner", ["sh"]), "must be a relative path"),
    "lib-dotdot": (lambda o, prog: o["native"]["libs"].append("../../lib/evil.so"), "points outside the bundle"),
    "golden-absolute": (lambda o, prog: o["golden"].__setitem__("inputs", "/etc/passwd"), "points outside the bundle"),
}


@pytest.mark.parametrize("case", sorted(NAMED_PATH_CASES))
def test_manifest_named_paths_must_be_listed_bundle_files(case: str, bundle: Path, trap: tuple[Path, Path]) -> None:
    prog, marker = trap
    if json.loads((bundle / mf.MANIFEST).read_text()).get("native") is None:
        pytest.skip("the micro bundle has no native runner here")
    change, says = NAMED_PATH_CASES[case]
    edit_manifest(bundle, lambda o: change(o, prog))
    code, _, err = run("verify", str(bundle), "--native", "--no-torch", "--runs", "0")
    one_error(code, err, says)
    assert not marker.exists(), "a program outside the bundle was executed"


# --------------------------------------------------------------------------------------------------
# serious 2: compile -o replaces only a bundle of ours, and only once the new one is complete


NOT_OURS = {
    "foreign-manifest": ({"manifest.json": '{"name": "my project"}', "notes.txt": "mine"}, "not a bhvit-export bundle manifest"),
    "our-tag-unlisted-file": ({"manifest.json": '{"format": "bhvit-bundle", "files": {}}', "thesis.tex": "mine"},
                              "it holds thesis.tex, which its manifest.json does not list"),
    "no-manifest": ({"thesis.tex": "mine"}, "it has no manifest.json"),
    "manifest-not-json": ({"manifest.json": "{", "thesis.tex": "mine"}, "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(NOT_OURS))
def test_compile_never_replaces_a_folder_that_is_not_ours(case: str, tmp_path: Path, no_load: None) -> None:
    files, says = NOT_OURS[case]
    out = tmp_path / "project"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    before = {n: (out / n).read_text() for n in files}
    code, _, err = run("compile", str(tmp_path / "m.onnx"), "-o", str(out), "--no-native")
    one_error(code, err, f"-o {out} exists and is not a bundle written by bhvit-export", says, "refusing to replace it")
    assert {p.name: p.read_text() for p in out.iterdir()} == before and sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_compile_never_replaces_a_tar_that_is_not_ours(tmp_path: Path, no_load: None) -> None:
    out = tmp_path / "backup.tar"
    out.write_bytes(b"my backup, not a bundle")
    code, _, err = run("compile", str(tmp_path / "m.onnx"), "-o", str(out))
    one_error(code, err, "exists and is not a bundle written by bhvit-export (it is not a bundle archive)")
    assert out.read_bytes() == b"my backup, not a bundle"


def test_compile_replaces_its_own_bundle(bundle: Path, fused_onnx: Callable[[str], Path], stand_ins: list[str]) -> None:
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(bundle), "--no-native")
    assert code == 0, err
    assert mf.check_bundle(bundle).native is None and stand_ins == ["import", "build"]
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["b"]  # no temp or old folder left


def test_a_folder_that_changes_during_the_build_is_not_replaced(
    bundle: Path, fused_onnx: Callable[[str], Path], stand_ins: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ours when compile starts; a user's file lands in it during the (stand-in) build: refused at the
    rename, the folder and the user's file untouched, no temp left."""
    import bhvit_export.targets.build

    def build_while_the_user_writes(*_a: Any, **_k: Any) -> None:
        (bundle / "notes.txt").write_text("written during the build")

    monkeypatch.setattr(bhvit_export.targets.build, "build", build_while_the_user_writes)
    before = listing(bundle)
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(bundle), "--no-native")
    one_error(code, err, "changed during the build and is no longer a bundle of ours", "notes.txt")
    assert listing(bundle) == sorted(before + ["notes.txt"]) and sorted(p.name for p in bundle.parent.iterdir()) == ["b"]


# --------------------------------------------------------------------------------------------------
# class 1: output targets, refused before any slow step


def _mkfifo(path: Path) -> Path:
    os.mkfifo(path)
    return path



def _output_case(case: str, tmp_path: Path, model: Path) -> tuple[list[str], str]:
    """(command line, what the error says) for each hostile -o."""
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    compile_to = ["compile", str(model), "--no-native", "-o"]
    to_onnx = ["to-onnx", str(official_path("micro") / "checkpoint.pth"), "--reference", "-o"]
    cases: dict[str, tuple[list[str], str]] = {
        "compile-device-file": (compile_to + ["/dev/null"], "-o /dev/null exists and is a character device, not a folder"),
        "compile-tar-link-to-device": (compile_to + [str(tmp_path / "null.tar")], "null.tar is a symbolic link; give the path of the file itself"),
        "compile-fifo-tar": (compile_to + [str(tmp_path / "fifo.tar")], "is a FIFO (named pipe); give the path of a regular file"),
        "compile-input-itself": (compile_to + [str(model)], f"is the input {model} itself; refusing to overwrite the input"),
        "compile-file-where-folder": (compile_to + [str(blocker)], "exists and is a file, not a folder"),
        "compile-under-a-file": (compile_to + [str(blocker / "sub" / "b")], f"{blocker} is a file, not a folder, so nothing can be written under it"),
        "to-onnx-device-file": (to_onnx + ["/dev/null"], "-o /dev/null is a character device; give the path of a regular file"),
        "to-onnx-fifo": (to_onnx + [str(tmp_path / "fifo.onnx")], "is a FIFO (named pipe)"),
        "to-onnx-under-a-file": (to_onnx + [str(blocker / "m.onnx")], "is a file, not a folder"),
        "to-onnx-config-itself": (to_onnx + [str(blocker), "--config", str(blocker)], "is the input"),
    }
    if case == "compile-tar-link-to-device":
        os.symlink("/dev/null", tmp_path / "null.tar")
    if "fifo" in case:
        _mkfifo(Path(cases[case][0][-1]))
    return cases[case]


OUTPUT_CASES = ["compile-device-file", "compile-tar-link-to-device", "compile-fifo-tar", "compile-input-itself",
                "compile-file-where-folder", "compile-under-a-file", "to-onnx-device-file", "to-onnx-fifo",
                "to-onnx-under-a-file", "to-onnx-config-itself"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_hostile_output_targets_are_refused_before_loading(case: str, tmp_path: Path, no_load: None) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not loaded: the -o check comes first")
    args, says = _output_case(case, tmp_path, model)
    before = {p.name: p.lstat().st_mode for p in tmp_path.iterdir()}
    code, _, err = run(*args)
    one_error(code, err, says)
    assert {p.name: p.lstat().st_mode for p in tmp_path.iterdir()} == before, "something beside -o was touched"
    assert model.read_bytes() == b"not loaded: the -o check comes first"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a full disk that is cheap to fill); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]}): the monkeypatched cases cover it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_refused_before_the_build(small_fs: Path, fused_onnx: Callable[[str], Path], no_load: None) -> None:
    out = small_fs / "b"
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(out), "--no-native")
    line = one_error(code, err, f"-o {out}: no space left on device (0.2 MiB free in {small_fs}, about ")
    needed = float(re.search(r"about ([\d.]+) MiB needed\)$", line).group(1))
    assert 4.0 < needed < 10.0, line  # the micro bundle's estimate (its size follows the fused graph)
    assert list(small_fs.iterdir()) == []


def test_disk_full_while_writing_names_the_os_reason(small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """to-onnx's output is larger than the disk: ENOSPC at write time, with the OS's wording, no temp.
    (The export is a stand-in that returns a 1 MiB graph: the write is under test, not the exporter.)"""
    from onnx import TensorProto, helper

    import bhvit_export.export.reference as reference

    big = helper.make_tensor("w", TensorProto.FLOAT, [1 << 18], np.zeros(1 << 18, np.float32).tobytes(), raw=True)
    graph = helper.make_graph([], "big", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1 << 18])], [big])
    monkeypatch.setattr(reference, "export_reference", lambda model, **_k: helper.make_model(graph))
    import bhvit_export.golden as golden

    stand_in = golden.Golden(np.zeros((1, 3, 224, 224), np.float32), np.zeros((1, 10), np.float32), "pytorch")
    monkeypatch.setattr(golden, "pytorch_golden", lambda _model: stand_in)
    out = small_fs / "m.onnx"
    code, _, err = run("to-onnx", str(official_path("micro") / "checkpoint.pth"), "--reference", "--no-validate", "-o", str(out))
    one_error(code, err, f"cannot write {out}: No space left on device")
    assert list(small_fs.iterdir()) == []


def test_disk_full_while_writing_a_bundle(tmp_path: Path, fused_onnx: Callable[[str], Path], stand_ins: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the writers after the build (simulated: the pre-check saw enough room)."""
    import errno

    def full(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    out = tmp_path / "out" / "b"
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(out), "--no-native")
    one_error(code, err, f"cannot write {out}: No space left on device")
    assert list(tmp_path.iterdir()) == [], "a temp folder or the folder made for -o was left"


def test_no_space_pre_check_without_a_small_disk(tmp_path: Path, fused_onnx: Callable[[str], Path], no_load: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.output_target as output_target

    monkeypatch.setattr(output_target, "free_bytes", lambda _folder: 1024)
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(tmp_path / "b"))
    one_error(code, err, "no space left on device (0.0 MiB free in")


def test_read_only_folder_is_refused_before_loading(tmp_path: Path, no_load: None) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through modes: make the file system itself read-only
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip("running as root without mount: a read-only folder cannot be made")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        reason = "Read-only file system"
    else:
        ro.chmod(0o555)
        reason = "Permission denied"
    try:
        for args in (["compile", str(tmp_path / "m.onnx"), "-o", str(ro / "b")],
                     ["to-onnx", str(official_path("micro") / "checkpoint.pth"), "-o", str(ro / "m.onnx")]):
            code, _, err = run(*args)
            one_error(code, err, f"cannot write in {ro}: {reason}")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------------------
# class 2: limits on everything read


def _zip_bomb(path: Path, claimed: int) -> Path:
    """A checkpoint-shaped zip whose member claims ``claimed`` unpacked bytes (the file stays tiny)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(path.read_bytes())
    cd = data.index(b"PK\x01\x02")  # central directory entry: the uncompressed size at offset 24
    data[cd + 24 : cd + 28] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def test_checkpoint_zip_bomb_is_refused_before_unpacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    _forbid(monkeypatch, (torch, "load"))
    bomb = _zip_bomb(tmp_path / "bomb.pth", 0xFFFFFF00)
    code, _, err = run("to-onnx", str(bomb), "-o", str(tmp_path / "m.onnx"))
    one_error(code, err, "unpacks to 4.0 GiB in 1 entries, beyond the supported 2 GiB")


def _metadata(proto: Any, key: str, value: str) -> None:
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            return
    proto.metadata_props.add(key=key, value=value)


@pytest.fixture
def micro_proto(fused_onnx: Callable[[str], Path]) -> Any:
    import onnx

    return onnx.load(str(fused_onnx("micro")))


def _golden(proto: Any) -> dict[str, Any]:
    return json.loads(next(p.value for p in proto.metadata_props if p.key == "bhvit.golden"))


DEEP = "[" * 100_000 + "]" * 100_000


def _save(proto: Any, path: Path) -> Path:
    import onnx

    onnx.save(proto, str(path))
    return path


METADATA_CASES: dict[str, tuple[str, Callable[[dict[str, Any]], Any], str]] = {
    # case: (key, new value from the golden dict, what the error says)
    "golden-count-x-size": ("bhvit.golden", lambda g: json.dumps({**g, "count": 1024, "image_size": 4096}),
                            "1024 inputs of 4096x4096 are 196608 MiB, beyond the supported 256 MiB"),
    "golden-not-an-object": ("bhvit.golden", lambda g: "[1, 2]", "bhvit.golden metadata is damaged (TypeError"),
    "golden-no-digest": ("bhvit.golden", lambda g: json.dumps({k: v for k, v in g.items() if k != "inputs_sha256"}),
                         "bhvit.golden metadata is damaged (KeyError"),
    "golden-float-seed": ("bhvit.golden", lambda g: json.dumps({**g, "seed": 1e300}), "seed is 1e+300, expected a non-negative integer"),
    "golden-deep": ("bhvit.golden", lambda g: DEEP, "JSON nested deeper than 32 levels"),
    "config-not-json": ("bhvit.config", lambda g: "{", "bhvit.config metadata is damaged: not valid JSON"),
    "config-bad-depths": ("bhvit.config", lambda g: json.dumps({"depths": "abc"}), "BHViT config key 'depths' is 'abc', expected 4 integers"),
    "config-deep": ("bhvit.config", lambda g: DEEP, "nested deeper than 32 levels"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_damaged_metadata_is_refused_before_tvm(case: str, micro_proto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.targets.importer

    _forbid(monkeypatch, (bhvit_export.targets.importer, "import_fused"))
    key, value, says = METADATA_CASES[case]
    _metadata(micro_proto, key, value(_golden(micro_proto)))
    model = _save(micro_proto, tmp_path / "m.onnx")
    code, _, err = run("compile", str(model), "-o", str(tmp_path / "b"), "--no-native")
    one_error(code, err, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _fifo_with_a_writer(path: Path, after_s: float = 20.0) -> Path:
    """A FIFO; a thread opens it for writing after ``after_s`` so that a reader that wrongly opened it
    is released (and the test fails on the message) instead of hanging the suite."""
    _mkfifo(path)

    def release() -> None:
        time.sleep(after_s)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    threading.Thread(target=release, daemon=True).start()
    return path


ENDLESS_CASES = ["config-dev-zero", "config-fifo", "checkpoint-dev-zero", "checkpoint-fifo", "inspect-dev-zero",
                 "inspect-fifo", "golden-fifo", "target-json-dev-zero", "config-huge", "target-json-deep"]


@pytest.mark.parametrize("case", ENDLESS_CASES)
def test_endless_and_oversized_inputs(case: str, tmp_path: Path, fused_onnx: Callable[[str], Path]) -> None:
    ckpt = str(official_path("micro") / "checkpoint.pth")
    out = str(tmp_path / "out" / "m.onnx")
    zero_json = tmp_path / "zero.json"
    os.symlink("/dev/zero", zero_json)
    if case == "config-dev-zero":
        args, says = ["to-onnx", ckpt, "-o", out, "--config", "/dev/zero"], "--config: /dev/zero is a character device, expected a regular file"
    elif case == "config-fifo":
        fifo = _fifo_with_a_writer(tmp_path / "config.json")
        args, says = ["to-onnx", ckpt, "-o", out, "--reference", "--config", str(fifo)], "is a FIFO (named pipe), expected a regular file"
    elif case == "checkpoint-dev-zero":
        args, says = ["to-onnx", "/dev/zero", "-o", out], "checkpoint: /dev/zero is a character device"
    elif case == "checkpoint-fifo":
        args, says = ["to-onnx", str(_fifo_with_a_writer(tmp_path / "c.pth")), "-o", out], "is a FIFO (named pipe)"
    elif case == "inspect-dev-zero":
        args, says = ["inspect", "/dev/zero"], "/dev/zero is a character device, expected an ONNX file"
    elif case == "inspect-fifo":
        args, says = ["inspect", str(_fifo_with_a_writer(tmp_path / "m.onnx"))], "is a FIFO (named pipe), expected an ONNX file"
    elif case == "golden-fifo":
        fifo = _fifo_with_a_writer(tmp_path / "x.npy")
        args = ["compile", str(fused_onnx("micro")), "-o", str(tmp_path / "b"), "--no-native",
                "--golden-inputs", str(fifo), "--golden-outputs", str(fifo)]
        says = f"golden file: {fifo} is a FIFO (named pipe), expected a regular file"
    elif case == "target-json-dev-zero":
        args, says = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"), "--target", str(zero_json)], "is a character device"
    elif case == "config-huge":
        big = tmp_path / "big.json"
        big.write_text('{"pad": "' + "x" * (2 << 20) + '"}')
        args, says = ["to-onnx", ckpt, "-o", out, "--reference", "--config", str(big)], "is over 1024 KiB"
    else:  # target-json-deep
        deep = tmp_path / "t.json"
        deep.write_text('{"kind": "llvm", "x": ' + "[" * 10_000 + "]" * 10_000 + "}")
        args, says = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"), "--target", str(deep)], "JSON nested deeper than 32 levels"
    t0 = time.monotonic()
    code, _, err = run(*args)
    one_error(code, err, says)
    assert time.monotonic() - t0 < 15, "the reader waited on the FIFO"
    assert not (tmp_path / "out").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("flag, value", [("--runs", "10001"), ("--warmup", "100000"), ("--threads", "100000"), ("--timeout", "nan"),
                                         ("--timeout", "0")])
def test_verify_counts_are_bounded(flag: str, value: str, micro_bundle: Path) -> None:
    res = CliRunner().invoke(cli, ["verify", str(micro_bundle), flag, value])
    assert res.exit_code == 2 and f"Invalid value for '{flag}'" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------------
# class 3: tensor types and training args in checkpoints


def _bad_tensor(kind: str, n: int) -> Any:
    import torch

    return {
        "complex": lambda: torch.zeros(n, dtype=torch.complex64),
        "bool": lambda: torch.ones(n, dtype=torch.bool),
        "int8": lambda: torch.ones(n, dtype=torch.int8),
        "float8": lambda: torch.ones(n).to(torch.float8_e4m3fn),
        "meta": lambda: torch.empty(n, device="meta"),
        "sparse": lambda: torch.ones(n).to_sparse(),
        "int-where-float": lambda: torch.ones(n, dtype=torch.int64),
        "nan-bfloat16": lambda: torch.full((n,), float("nan")).to(torch.bfloat16),
        "inf-float64": lambda: torch.full((n,), float("inf"), dtype=torch.float64),
    }[kind]()


TENSOR_CASES = {
    "complex": "has dtype complex64; a BHViT checkpoint holds float16, bfloat16, float32, float64 weights",
    "bool": "has dtype bool",
    "int8": "has dtype int8",
    "float8": "has dtype float8_e4m3fn",
    "meta": "(float32) is on device 'meta' and holds no data",
    "sparse": "is sparse_coo (float32); only dense tensors are loaded",
    "int-where-float": "has dtype int64, the model needs a float tensor",
    "nan-bfloat16": "1 tensors hold NaN or Inf values",
    "inf-float64": "1 tensors hold NaN or Inf values",
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensor_types_are_named(case: str, micro_checkpoint: dict[str, Any], tmp_path: Path) -> None:
    import torch

    ckpt = dict(micro_checkpoint)
    sd = dict(ckpt["model"])
    key = next(k for k in sd if k.endswith("classifier.bias"))
    sd[key] = _bad_tensor(case, sd[key].numel())
    ckpt["model"] = sd
    path = tmp_path / "c.pth"
    torch.save(ckpt, path)
    code, _, err = run("to-onnx", str(path), "-o", str(tmp_path / "m.onnx"), "--reference")
    one_error(code, err, TENSOR_CASES[case], key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


@pytest.mark.parametrize("value, says", [("one", "'weight_bits' is a str ('one'), expected a number or a bool"),
                                         (1.5, "'weight_bits' is 1.5, expected an integer or a bool"),
                                         ([1], "'weight_bits' is a list")])
def test_non_numeric_training_args(value: Any, says: str, micro_checkpoint: dict[str, Any], tmp_path: Path) -> None:
    import argparse

    import torch

    ckpt = dict(micro_checkpoint)
    ckpt["args"] = argparse.Namespace(**{**vars(ckpt["args"]), "weight_bits": value})
    path = tmp_path / "c.pth"
    torch.save(ckpt, path)
    code, _, err = run("to-onnx", str(path), "-o", str(tmp_path / "m.onnx"), "--reference")
    one_error(code, err, "training args: " + says)


# --------------------------------------------------------------------------------------------------
# class 4: tolerances


@pytest.mark.parametrize("flag, value, says", [
    ("--min-cosine", "nan", "--min-cosine nan: expected a number from -1 to 1"),
    ("--min-cosine", "1.5", "--min-cosine 1.5: expected a number from -1 to 1"),
    ("--max-abs-over-std", "inf", "--max-abs-over-std inf: expected a finite number >= 0"),
    ("--max-abs-over-std", "-0.1", "--max-abs-over-std -0.1: expected a finite number >= 0"),
    ("--min-top1", "nan", "--min-top1 nan: expected a number from 0 to 1"),
])
def test_bad_tolerance_flags(flag: str, value: str, says: str, micro_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bhvit_export.bundle import manifest as manifest_mod

    _forbid(monkeypatch, (manifest_mod, "check_bundle"))  # decided before the bundle is even read
    code, _, err = verify(str(micro_bundle), flag, value)
    one_error(code, err, says)


MANIFEST_TOLERANCE_CASES = {
    "missing-one": (lambda t: t.pop("min_cosine"), "the tolerance min_cosine is missing"),
    "missing-all": (None, "manifest.json is incomplete or malformed (KeyError: 'tolerances')"),
    "nan-as-string": (lambda t: t.__setitem__("max_abs_over_std", "nan"), "the tolerance max_abs_over_std is 'nan'"),
    "negative": (lambda t: t.__setitem__("max_abs_over_std", -1), "the tolerance max_abs_over_std is -1"),
    "infinity-literal": (lambda t: t.__setitem__("min_top1_agreement", "INF"), "not valid JSON (Infinity is not valid JSON"),
    "unknown": (lambda t: t.__setitem__("min_cosin", 0.1), "unknown tolerance 'min_cosin'"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_TOLERANCE_CASES))
def test_bad_tolerances_in_the_manifest(case: str, bundle: Path) -> None:
    change, says = MANIFEST_TOLERANCE_CASES[case]
    text = (bundle / mf.MANIFEST).read_text()
    obj = json.loads(text)
    if change is None:
        del obj["tolerances"]
    else:
        change(obj["tolerances"])
    (bundle / mf.MANIFEST).write_text(json.dumps(obj).replace('"INF"', "Infinity"))  # Python's json would read it
    code, _, err = verify(str(bundle))
    one_error(code, err, says)


MANIFEST_FIELD_CASES = {
    "input-shape-text": (lambda o: o["input"].__setitem__("shape", [1, 3, "x", 224]), "manifest.json: input.shape is [1, 3, 'x', 224]"),
    "input-shape-negative-batch": (lambda o: o["input"].__setitem__("shape", [-1, 3, 224, 224]), "input.shape is [-1, 3, 224, 224]"),
    "output-shape-null": (lambda o: o["output"].__setitem__("shape", None), "output.shape is None, expected [1, classes]"),
    "target-empty": (lambda o: o.__setitem__("target", {}), "target.arch is None, expected x86_64 or aarch64"),
    "cpu-features-not-names": (lambda o: o["target"].__setitem__("cpu_features", [None]), "target.cpu_features is [None], expected a list of feature names"),
    "config-a-list": (lambda o: o["model"].__setitem__("config", ["depths"]), "model.config is ['depths'], expected an object or null"),
    "config-bad-value": (lambda o: o["model"]["config"].__setitem__("num_labels", -3), "model.config: BHViT config key 'num_labels' is -3"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_FIELD_CASES))
def test_damaged_manifest_fields(case: str, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    _forbid(monkeypatch, (tvm.runtime, "load_module"))
    change, says = MANIFEST_FIELD_CASES[case]
    edit_manifest(bundle, change)
    code, _, err = verify(str(bundle))
    one_error(code, err, says)


def test_a_nan_metric_never_passes() -> None:
    from bhvit_export.verify.metrics import Accuracy

    tol = {"min_cosine": 0.9995, "max_abs_over_std": 0.05, "min_top1_agreement": 1.0}
    for field in ("cosine", "max_abs_over_std", "top1_agreement"):
        acc = Accuracy(count=1, max_abs_err=0.0, max_rel_err=0.0, max_abs_over_std=0.0, cosine=1.0, top1_agreement=1.0, finite=True)
        acc = Accuracy(**{**acc.__dict__, field: float("nan")})
        ok, failed = acc.passes(tol)
        assert not ok and failed, field


# --------------------------------------------------------------------------------------------------
# class 5: a peer that accepts and never answers


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte (closed after the test)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.parametrize("how", ["--rpc", "--tracker"])
def test_silent_rpc_peer_times_out(how: str, micro_bundle: Path, silent_peer: str) -> None:
    """In a real process (the stuck TVM call must not keep it alive): exit 2 within the timeout."""
    args = [how, silent_peer] + (["--key", "rasp4"] if how == "--tracker" else [])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bhvit_export", "verify", str(micro_bundle), "--no-torch", "--runs", "0",
                           "--timeout", "2", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = [ln for ln in proc.stderr.splitlines() if not ln.startswith("... ")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert f"error[target]: {how} {silent_peer}: no answer within 2 s" in err[0], err
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------------------------------
# class 6: signals during TVM's build and timing loop (real processes, real TVM)


def _signal_when(args: list[str], line: str, sig: signal.Signals) -> tuple[int, list[str], float]:
    """Start ``bhvit-export ARGS``, send ``sig`` once stderr shows ``line`` (+0.5 s); exit code, error
    lines, and seconds from the signal to the exit."""
    main = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # even if the runner ignores it
            "from bhvit_export.cli import main; main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", main, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for ln in proc.stderr:
            lines.append(ln.rstrip("\n"))
            if line in ln:
                break
        else:
            pytest.fail(f"never reached {line!r}: {lines[-5:]}")
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[1]
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += rest.splitlines()
    return proc.returncode, [ln for ln in lines if not ln.startswith("... ")], took


def test_sigterm_during_the_tvm_build(fused_onnx: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "b"
    code, err, took = _signal_when(["compile", str(fused_onnx("micro")), "-o", str(out), "--no-native"],
                                   "building for", signal.SIGTERM)
    assert (code, err) == (143, ["error[terminated]: terminated (SIGTERM); nothing was written"])
    assert took < 5, f"took {took:.1f} s to stop"
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_the_timing_loop(micro_bundle: Path) -> None:
    code, err, took = _signal_when(["verify", str(micro_bundle), "--no-torch", "--runs", "10000"], "timing 10000 runs",
                                   signal.SIGINT)
    assert (code, err) == (130, ["error[interrupted]: interrupted; nothing was written"])
    assert took < 5, f"took {took:.1f} s to stop"


# --------------------------------------------------------------------------------------------------
# class 7: damaged op attributes; inspect counts with Python ints


def _drop_attribute(proto: Any, op_type: str, name: str) -> str:
    node = next(n for n in proto.graph.node if n.op_type == op_type)
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)
    return node.name


@pytest.mark.parametrize("cmd", ["inspect", "compile"])
def test_missing_op_attribute(cmd: str, micro_proto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bhvit_export.targets.importer

    _forbid(monkeypatch, (bhvit_export.targets.importer, "import_fused"))
    name = _drop_attribute(micro_proto, "BinaryLinear", "in_features")
    model = _save(micro_proto, tmp_path / "m.onnx")
    args = ["inspect", str(model)] if cmd == "inspect" else ["compile", str(model), "-o", str(tmp_path / "b")]
    code, _, err = run(*args)
    one_error(code, err, f"BinaryLinear node '{name}' lacks its attribute 'in_features'")


def test_inspect_counts_with_python_ints(tmp_path: Path) -> None:
    """A MatMul of [1, 2^32] x [2^32, 2^32] is 2^64 MACs: int64 would wrap it to 0 or a negative."""
    import onnx
    from onnx import TensorProto, helper

    n = 2**32
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "huge",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n]),
                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "huge.onnx")
    assert onnx.load(str(model)).graph.node
    code, out, err = run("inspect", str(model), "--json")
    assert code == 0, err
    assert json.loads(out)["flops"] == 2**64


# --------------------------------------------------------------------------------------------------
# class 8: links and special files in a bundle folder


def _link_outside(bundle: Path, tmp_path: Path) -> str:
    outside = tmp_path / "outside.so"
    outside.write_bytes(b"not in the bundle")
    os.symlink(outside, bundle / "libevil.so")
    return "libevil.so is a symbolic link"


def _listed_file_as_link(bundle: Path, tmp_path: Path) -> str:
    """The same bytes (so the hash matches) but through a link out of the bundle."""
    copy = tmp_path / "inputs.npy"
    shutil.copy(bundle / mf.GOLDEN_INPUTS, copy)
    (bundle / mf.GOLDEN_INPUTS).unlink()
    os.symlink(copy, bundle / mf.GOLDEN_INPUTS)
    return "golden/inputs.npy is a symbolic link"


def _folder_link(bundle: Path, tmp_path: Path) -> str:
    os.symlink("/etc", bundle / "etc")
    return "etc is a symbolic link"


def _fifo_in_bundle(bundle: Path, tmp_path: Path) -> str:
    _fifo_with_a_writer(bundle / "golden" / "extra.npy")
    return "golden/extra.npy is a FIFO (named pipe)"


def _manifest_link(bundle: Path, tmp_path: Path) -> str:
    real = tmp_path / "manifest.json"
    shutil.move(bundle / mf.MANIFEST, real)
    os.symlink(real, bundle / mf.MANIFEST)
    return "manifest.json is a symbolic link"


BUNDLE_TREE_CASES = {"unlisted-link": _link_outside, "listed-file-as-link": _listed_file_as_link,
                     "folder-link": _folder_link, "fifo": _fifo_in_bundle, "manifest-link": _manifest_link}


@pytest.mark.parametrize("case", sorted(BUNDLE_TREE_CASES))
def test_links_and_special_files_in_a_bundle_are_refused(case: str, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    _forbid(monkeypatch, (tvm.runtime, "load_module"))
    says = BUNDLE_TREE_CASES[case](bundle, tmp_path)
    t0 = time.monotonic()
    code, _, err = verify(str(bundle))
    one_error(code, err, says)
    assert time.monotonic() - t0 < 15


# --------------------------------------------------------------------------------------------------
# class 9: --mcpu unknown to LLVM


@pytest.mark.parametrize("target, mcpu, says", [
    ("x86_64", "haswel", "--mcpu haswel: LLVM does not know the CPU 'haswel' for x86_64 (did you mean haswell?)"),
    ("aarch64", "cortex-a27", "--mcpu cortex-a27: LLVM does not know the CPU 'cortex-a27' for aarch64 (did you mean cortex-a72,"),
    ('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx"}', None,
     "LLVM does not know the CPU 'skylake-avx' for x86_64 (did you mean skylake-avx512"),
])
def test_unknown_mcpu_names_the_close_ones(target: str, mcpu: str | None, says: str, tmp_path: Path, no_load: None) -> None:
    args = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"), "--target", target] + (["--mcpu", mcpu] if mcpu else [])
    code, _, err = run(*args)
    if code == 2 and "not found" in err[0]:
        pytest.skip(err[0])  # no cross compiler here: that check comes first
    one_error(code, err, says)


# --------------------------------------------------------------------------------------------------
# class 10: verify --images --reference


@pytest.fixture
def images(tmp_path: Path) -> Path:
    pytest.importorskip("PIL.Image")
    from PIL import Image

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 200, 30)).save(root / c / "ok.png")
    return root


def _foreign_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("case", ["missing", "corrupt-onnx", "foreign-onnx", "checkpoint-as-onnx", "fifo", "corrupt-checkpoint"])
def test_bad_reference_for_images(case: str, micro_bundle: Path, images: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    ref = tmp_path / "ref.onnx"
    if case == "missing":
        says = f"--reference: no such file: {ref}"
    elif case == "corrupt-onnx":
        ref.write_bytes(bytes(range(256)) * 4)
        says = "not an ONNX model onnxruntime can load"
    elif case == "foreign-onnx":
        _foreign_onnx(ref)
        says = "not an image classifier for this bundle (expected float [N, 3, 224, 224] -> [N, 10]"
    elif case == "checkpoint-as-onnx":
        shutil.copy(official_path("micro") / "checkpoint.pth", ref)
        says = "not an ONNX model onnxruntime can load"
    elif case == "fifo":
        _fifo_with_a_writer(ref)
        says = "is a FIFO (named pipe), expected a regular file"
    else:
        ref = tmp_path / "ref.pth"
        ref.write_bytes(b"PK\x03\x04 half a zip")
        says = "is truncated or corrupt"
    code, _, err = verify(str(micro_bundle), "--images", str(images), "--reference", str(ref))
    one_error(code, err, says)


# --------------------------------------------------------------------------------------------------
# class 11: a TVM failure is our one line, with TVM's text in a log file


def test_tvm_failure_is_one_line_and_a_log(fused_onnx: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    import bhvit_export.targets.build

    ir_dump = "\n".join(["Traceback (most recent call last):"] + [f"  {i}: tvm::relax::SomePass  # IR line {i}" for i in range(300)]
                        + ["InternalError: Check failed: (lanes == 64) is false: simulated"])

    def failing_build(*_a: Any, **_k: Any) -> None:
        raise tvm.error.InternalError(ir_dump)

    monkeypatch.setattr(bhvit_export.targets.build, "build", failing_build)
    out = tmp_path / "b"
    code, _, err = run("compile", str(fused_onnx("micro")), "-o", str(out), "--no-native")
    line = one_error(code, err, "TVM failed while building micro.onnx for x86_64", "Check failed: (lanes == 64) is false",
                     "full TVM output in ")
    log = Path(line.rsplit("full TVM output in ", 1)[1].rstrip(")"))
    try:
        assert log.is_file() and "IR line 299" in log.read_text()
    finally:
        log.unlink(missing_ok=True)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_converter_error_is_the_last_line_and_stdout_stays_clean(micro_proto: Any, tmp_path: Path) -> None:
    """A real TVM import that fails in our converter (in_features lies about x's width): TVM's own
    prints (the importer's IR dump on stdout, a C++ warning when its objects are freed) go to the log,
    so --json's stdout is empty and the last stderr line is ours."""
    node = next(n for n in micro_proto.graph.node if n.op_type == "BinaryLinear")
    next(a for a in node.attribute if a.name == "in_features").i = 100
    model = _save(micro_proto, tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "bhvit_export", "compile", str(model), "-o", str(tmp_path / "b"), "--no-native",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    says = f"BinaryLinear {node.name}: x has 256 features, in_features is 100"
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == says and json.loads(proc.stdout)["stage"] == "compile", proc.stdout[-500:]  # --json's error envelope only
    assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("... ")] == [f"error[compile]: {says}"], proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bench_plot_target_is_checked_before_timing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for plot, says in (("/dev/null", "--plot /dev/null is a character device; give the path of a regular file to write"),
                       (str(blocker / "p.png"), "is a file, not a folder, so nothing can be written under it")):
        code, _, err = run("bench", "--plot", plot, "--model", "tiny", "--batch", "1", "--threads", "1")
        one_error(code, err, says)
