"""Reliability sweep (issue #7): SIGINT / SIGTERM while ``to-onnx`` or ``compile`` writes its output.

A real process is signalled while its output exists only under the temporary name: the slow
steps (export, TVM build) are replaced by stand-ins in a small wrapper around ``main()``, and the
write step pauses right after creating the temp and writing half of it (it drops a marker file, the
test waits for the marker, then signals). Expected: exit 130 (SIGINT) or 143 (SIGTERM), one error
line, no output and no hidden ``.NAME.*.tmp`` left, an existing output from an earlier run left
intact, and a re-run succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from bhvit_export.cli import cli
from tests.helpers import REPO, official_path

EXPECTED = {
    signal.SIGINT: (130, "error[interrupted]: interrupted; nothing was written"),
    signal.SIGTERM: (143, "error[terminated]: terminated (SIGTERM); nothing was written"),
}

#: ``python -c`` body: argv = [marker, pause(0/1), bhvit-export args...]. Stand-ins replace the slow
#: steps; the write step writes half its output under the temp name, drops the marker and sleeps.
WRAPPER = r'''
import signal, sys, time
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the test runner ignores SIGINT
marker, pause, args = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]


def wait_here(tmp):
    marker.write_text(str(tmp))
    if pause:
        time.sleep(300)


if args[0] == "to-onnx":
    import onnx
    import bhvit_export.export.reference as reference
    from bhvit_export.atomic import atomic_path

    reference.export_reference = lambda model, **_k: onnx.ModelProto()

    def save_model(proto, path):
        data = proto.SerializeToString(deterministic=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            wait_here(tmp)
            tmp.write_bytes(data)
        return len(data)

    reference.save_model = save_model
else:
    import bhvit_export.compile as compile_mod
    import bhvit_export.targets.build
    import bhvit_export.targets.importer

    bhvit_export.targets.importer.import_fused = lambda *_a, **_k: None
    bhvit_export.targets.build.build = lambda *_a, **_k: None

    def export(_ex, _spec, path):
        path.write_bytes(b"\x7fELF half a library")
        wait_here(path.parent)
        path.write_bytes(b"\x7fELF a whole (stand-in) library")

    compile_mod._export = export

from bhvit_export.cli import main
main(args)
'''


def _start(marker: Path, pause: bool, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(marker), "1" if pause else "0", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _interrupt(sig: signal.Signals, marker: Path, *args: str) -> tuple[int, list[str], Path]:
    """Run, wait until the temp output exists, send ``sig``; (exit code, error lines, the temp path)."""
    marker.unlink(missing_ok=True)
    proc = _start(marker, True, *args)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=30)
                pytest.fail(f"never reached the write step (exit {proc.returncode}): {err[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.2)  # the marker is written before sleep() starts; let it start
        tmp = Path(marker.read_text())
        assert tmp.exists(), "the stand-in did not write its temp output"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [ln for ln in err.splitlines() if not ln.startswith("... ")], tmp


def _rerun(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """The same command in this process with the same stand-ins, not paused: it must succeed."""
    if args[0] == "to-onnx":
        import onnx

        import bhvit_export.export.reference as reference

        monkeypatch.setattr(reference, "export_reference", lambda model, **_k: onnx.ModelProto())
    else:
        import bhvit_export.compile as compile_mod
        import bhvit_export.targets.build
        import bhvit_export.targets.importer

        monkeypatch.setattr(bhvit_export.targets.importer, "import_fused", lambda *_a, **_k: None)
        monkeypatch.setattr(bhvit_export.targets.build, "build", lambda *_a, **_k: None)
        monkeypatch.setattr(compile_mod, "_export", lambda _ex, _spec, path: path.write_bytes(b"\x7fELF stand-in"))
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("sig, existing", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-new", "SIGTERM-over-existing"])
def test_to_onnx_interrupted_leaves_nothing_and_a_rerun_succeeds(
    sig: signal.Signals, existing: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = official_path("micro") / "checkpoint.pth"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    if existing:
        out.write_bytes(b"an earlier run's output")
    args = ("to-onnx", str(ckpt), "-o", str(out), "--reference", "--no-validate")  # the stand-in graph is empty
    code, err, tmp = _interrupt(sig, tmp_path / "marker", *args)
    assert (code, err) == (EXPECTED[sig][0], [EXPECTED[sig][1]])
    assert tmp.name.startswith(".m.onnx.") and tmp.name.endswith(".tmp")
    assert [p.name for p in out_dir.iterdir()] == (["m.onnx"] if existing else []), "a partial output or temp was left"
    if existing:
        assert out.read_bytes() == b"an earlier run's output"
    _rerun(monkeypatch, *args)
    assert [p.name for p in out_dir.iterdir()] == ["m.onnx"]
    assert out.read_bytes() != b"an earlier run's output"


@pytest.mark.parametrize("sig, form, existing",
                         [(signal.SIGINT, "folder", False), (signal.SIGTERM, "folder", True), (signal.SIGTERM, "tar", False)],
                         ids=["SIGINT-folder-new", "SIGTERM-folder-over-existing", "SIGTERM-tar-new"])
def test_compile_interrupted_leaves_nothing_and_a_rerun_succeeds(
    sig: signal.Signals, form: str, existing: bool, fused_onnx: Callable[[str], Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("tvm")
    from bhvit_export.bundle import manifest as mf
    from bhvit_export.verify.verify import open_bundle

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / ("b.tar" if form == "tar" else "b")
    if existing:  # an earlier bundle: our format tag and every file listed is what compile checks
        out.mkdir()
        (out / mf.MANIFEST).write_text('{"format": "bhvit-bundle", "files": {}}')
    before = _digest(out) if existing else None
    args = ("compile", str(fused_onnx("micro")), "-o", str(out), "--no-native")
    code, err, _ = _interrupt(sig, tmp_path / "marker", *args)
    assert (code, err) == (EXPECTED[sig][0], [EXPECTED[sig][1]])
    assert [p.name for p in out_dir.iterdir()] == ([out.name] if existing else []), "a partial bundle or temp was left"
    if existing:
        assert _digest(out) == before
    _rerun(monkeypatch, *args)
    assert [p.name for p in out_dir.iterdir()] == [out.name]
    with open_bundle(out) as root:
        assert mf.check_bundle(root).golden["count"] >= 1  # a complete, consistent bundle (the count is the ONNX's golden set)


def _digest(path: Path) -> Any:
    if path.is_file():
        return path.read_bytes()
    return sorted((p.relative_to(path).as_posix(), p.read_bytes()) for p in path.rglob("*") if p.is_file())


def test_in_process_sigterm_handler_is_restored() -> None:
    """main() installs its SIGTERM handler for its own run only (tests calling it keep theirs)."""
    from bhvit_export.cli import main

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and signal.getsignal(signal.SIGTERM) is before
    assert CliRunner().invoke(cli, ["--version"]).exit_code == 0
