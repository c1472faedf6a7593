"""onnxruntime's aarch64 build under qemu-user, for the ARM estimate's peer column.

What runs: Debian bookworm's arm64 ``python3.11`` (its packages fetched with ``apt-get download``
into a private apt state, nothing installed on this system) in a sysroot, with the aarch64 wheels
of ``onnxruntime==1.19.2`` and ``numpy==1.26.4`` unpacked beside it. Seen here: onnxruntime 1.32's
aarch64 wheel segfaults at import under qemu-user 7.2; 1.16.3 and 1.19.2 import and run, and give
the x86 build's logits (to 1e-7 relative) on the Tiny reference ONNX. The script runs a one-thread
session (all graph optimisations, as ``bench``'s x86 onnxruntime) ``n`` times; the block counts of
``n = 2`` minus ``n = 1`` are one inference, as for our bundles.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from bhvit_export.errors import TargetError
from bhvit_export.targets.runtime_libs import cache_root

from . import block_counts

ORT_VERSION = "1.19.2"
NUMPY_VERSION = "1.26.4"
#: Debian arm64 packages python3.11 needs to start and import numpy/onnxruntime.
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "zlib1g", "libffi8",
    "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1", "libgcc-s1", "libstdc++6", "libc6",
    "libcrypt1", "libnsl2", "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libcom-err2", "libkeyutils1", "libdb5.3", "libncursesw6", "libtinfo6", "libreadline8",
)
_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
name = s.get_inputs()[0].name
for _ in range(int(sys.argv[3])):
    s.run(None, {name: x})
"""
_SOURCE = """Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Architectures: arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _folder() -> Path:
    return cache_root() / f"ort-aarch64-{ORT_VERSION}"


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TargetError(f"{what} failed: {err}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise TargetError(f"{what} failed: {last}")


def _sysroot(folder: Path, say: Callable[[str], None]) -> Path:
    root = folder / "root"
    if (root / "usr" / "bin" / "python3.11").is_file():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise TargetError("no apt-get/dpkg-deb to fetch Debian's arm64 python3.11")
    say("onnxruntime aarch64: fetching Debian's arm64 python3.11 (apt-get download, private apt state)")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".apt-") as tmp:
        t = Path(tmp)
        for d in ("state/lists/partial", "cache/archives/partial", "etc", "debs", "root"):
            (t / d).mkdir(parents=True)
        (t / "state" / "status").touch()
        (t / "etc" / "arm64.sources").write_text(_SOURCE)
        opts = [f"-oDir::State={t}/state", f"-oDir::State::status={t}/state/status", f"-oDir::Cache={t}/cache",
                "-oDir::Etc::SourceList=/dev/null", f"-oDir::Etc::SourceParts={t}/etc",
                "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64"]
        _run(["apt-get", *opts, "update"], "apt-get update (arm64 lists)")
        _run(["apt-get", *opts, "download", *DEBS], "apt-get download (arm64 python3.11)", cwd=t / "debs")
        for deb in sorted((t / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(t / "root")], f"unpacking {deb.name}")
        os.replace(t / "root", root)
    return root


def _site(folder: Path, say: Callable[[str], None]) -> Path:
    site = folder / "site"
    if (site / "onnxruntime").is_dir() and (site / "numpy").is_dir():
        return site
    say(f"onnxruntime aarch64: downloading the onnxruntime {ORT_VERSION} and numpy {NUMPY_VERSION} aarch64 wheels")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".whl-") as tmp:
        t = Path(tmp)
        for spec in (f"onnxruntime=={ORT_VERSION}", f"numpy=={NUMPY_VERSION}"):
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                  "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
                  "--platform", "manylinux_2_27_aarch64", "--python-version", "3.11", "-d", str(t / "w"), spec],
                 f"pip download {spec} (aarch64)")
        (t / "site").mkdir()
        for whl in (t / "w").glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(t / "site")
        os.replace(t / "site", site)
    return site


def count_inference(model: Path, qemu_cpu: str, say: Callable[[str], None]) -> block_counts.Counts:
    """Blocks of one onnxruntime inference of ``model`` at one thread under qemu (counts cached)."""
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    root, site = _sysroot(folder, say), _site(folder, say)
    key = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bhvit-ort-") as tmp:
        script, x = Path(tmp) / "run.py", Path(tmp) / "x.npy"
        script.write_text(_SCRIPT)
        np.save(x, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
        for n in (1, 2):
            keep = folder / f"{key}.{qemu_cpu}.runs{n}.counts"
            runs.append(block_counts.count(
                [str(root / "usr" / "bin" / "python3.11"), str(script), str(model), str(x), str(n)], "aarch64",
                qemu_cpu=qemu_cpu, env={"PYTHONPATH": str(site)}, sysroot=str(root), keep=keep,
            ))
    return runs[1].minus(runs[0])
