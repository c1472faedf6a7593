"""The library call behind ``bhvit-export verify``: check, load, run, compare, time.

Order matters for safety: the manifest and every file's SHA-256 are checked before the library is
opened (opening a shared library runs its code). Then the golden inputs run through the chosen
runner, the outputs are compared with the stored reference outputs, and latency is measured.
Exit status: 0 within tolerance, 1 outside (``VerificationFailed``), 2 for bad input.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from bhvit_export.targets.toolchain import host_arch

from ..bundle import manifest as mf
from ..errors import BundleError
from . import cpu_check, latency, runners
from . import tolerances as criteria
from .reference_checks import reference_checks
from .metrics import Accuracy, compare

Progress = Callable[[str], None]


@dataclass
class VerifyOptions:
    """What the user chose on the command line (None: the bundle's or the default)."""

    runs: int = 20
    warmup: int = 3
    threads: Optional[int] = None
    rpc: Optional[str] = None
    tracker: Optional[str] = None
    key: Optional[str] = None
    devices: int = 1
    native: bool = False
    tolerances: dict[str, float] = field(default_factory=dict)
    torch_latency: bool = True
    profile: bool = False
    images: Optional[Path] = None
    images_limit: Optional[int] = None
    reference: Optional[Path] = None  # for --images: the reference .onnx or checkpoint
    labels: Optional[Path] = None  # for --images: a class-index file (JSON or TXT)
    timeout: Optional[float] = None  # seconds an RPC device or tracker may stay silent (None: the default)


@dataclass
class DeviceResult:
    """Accuracy and latency of one device (a verify may fan out over several through a tracker)."""

    where: str
    accuracy: Accuracy
    passed: bool
    failures: list[str]
    latency_ms: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "passed": self.passed,
            "failures": self.failures,
            **self.accuracy.to_json(),
            "latency_ms": self.latency_ms,
        }


@dataclass
class VerifyReport:
    """The verify result: ``passed`` only when every device passed."""

    bundle: str
    target: dict[str, Any]
    batch: int
    golden_source: str
    tolerances: dict[str, float]
    devices: list[DeviceResult]
    notes: list[str] = field(default_factory=list)
    pytorch_latency_ms: Optional[dict[str, Any]] = None
    profile: Optional[list[dict[str, Any]]] = None
    images: Optional[dict[str, Any]] = None
    profile_blocks: Optional[list[dict[str, Any]]] = None  # --profile time per model block
    reference: Optional[dict[str, Any]] = None  # golden spread, sensitivity, widened tolerances
    reference_lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        first = self.devices[0]
        return {
            "passed": self.passed,
            "bundle": self.bundle,
            "target": self.target,
            "batch": self.batch,
            "reference": self.golden_source,
            "tolerances": self.tolerances,
            # the first device's numbers at top level; all of them under "devices"
            "max_abs_err": first.accuracy.max_abs_err,
            "max_rel_err": first.accuracy.max_rel_err,
            "max_abs_over_std": first.accuracy.max_abs_over_std,
            "cosine": first.accuracy.cosine,
            "top1_agreement": first.accuracy.top1_agreement,
            "latency_ms": first.latency_ms,
            "pytorch_latency_ms": self.pytorch_latency_ms,
            "devices": [d.to_json() for d in self.devices],
            "profile": self.profile,
            "profile_blocks": self.profile_blocks,
            "images": self.images,
            "reference_checks": self.reference,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        out = [
            f"bundle {self.bundle}: {self.target['name']} ({self.target['arch']}, {self.target['device']}), "
            f"batch {self.batch}, reference from {self.golden_source}"
        ]
        for d in self.devices:
            a, lt = d.accuracy, d.latency_ms
            out.append(
                f"{d.where}: {'PASS' if d.passed else 'FAIL'}  {a.count} outputs, cosine {a.cosine:.6f}, "
                f"max |diff| {a.max_abs_err:.4g} ({a.max_abs_over_std:.2%} of std), top-1 agreement {a.top1_agreement:.0%}"
            )
            if lt["runs"]:
                out.append(
                    f"  latency per batch: min {lt['min']:.2f} ms, median {lt['median']:.2f} ms, p90 {lt['p90']:.2f} ms "
                    f"({lt['runs']} runs)"
                )
            out += [f"  failed: {f}" for f in d.failures]
        if self.pytorch_latency_ms:
            p = self.pytorch_latency_ms
            out.append(f"PyTorch reference (this machine): median {p['median']:.2f} ms, min {p['min']:.2f} ms")
        if self.profile:
            from ..layer_map import format_profile

            out += format_profile(self.profile, self.profile_blocks)
        if self.images:
            im = self.images
            line = f"images: {im['images']} in {im['classes']} classes ({im.get('labels', '?')}), top-1 {im['top1']:.2%} (compiled)"
            if "reference_top1" in im:
                line += f", {im['reference_top1']:.2%} (reference), agreement {im['agreement']:.2%}"
            out.append(line)
        out += self.reference_lines
        out += [f"note: {n}" for n in self.notes]
        out.append("PASSED" if self.passed else "FAILED")
        return out


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Path]:
    """The bundle folder (a ``.tar`` is unpacked into a temporary folder for the duration)."""
    if path.is_file():
        from ..bundle import archive

        tmp = archive.unpack(path)
        try:
            yield Path(tmp.name)
        finally:
            tmp.cleanup()
    else:
        yield path


def _golden(root: Path, manifest: mf.Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The golden pair, checked against the manifest before any library is loaded.

    The hashes only prove the files are the ones the manifest lists, not that the manifest's author
    was honest: shapes, dtypes and finiteness are checked here (a bad bundle, exit 2), so that a
    NaN in the *reference* is never reported as a failed verification of the compiled model.
    """
    try:
        # mmap: a header claiming a huge shape fails instead of allocating it
        xm = np.load(root / mf.GOLDEN_INPUTS, allow_pickle=False, mmap_mode="r")
        ym = np.load(root / mf.GOLDEN_REFERENCE, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise BundleError(f"golden files unreadable: {e}") from None
    from ..limits import MAX_GOLDEN_BYTES

    if xm.nbytes + ym.nbytes > MAX_GOLDEN_BYTES:
        raise BundleError(f"golden files hold {(xm.nbytes + ym.nbytes) / 2**20:.0f} MiB, beyond the supported {MAX_GOLDEN_BYTES // 2**20} MiB")
    x, y = np.array(xm), np.array(ym)
    shape = list(manifest.input["shape"])
    if x.dtype != np.float32 or list(x.shape[1:]) != shape[1:] or not len(x) or len(x) % manifest.batch or len(x) != len(y):
        raise BundleError(
            f"golden inputs {x.dtype}{list(x.shape)} do not match the input spec float32{shape} "
            f"(or their count is not a multiple of the batch)"
        )
    oshape = list(manifest.output["shape"])
    if y.dtype != np.float32 or list(y.shape[1:]) != oshape[1:]:
        raise BundleError(f"golden reference {y.dtype}{list(y.shape)} does not match the output spec float32{oshape}")
    for what, arr in (("inputs", x), ("reference", y)):
        if not np.isfinite(arr).all():
            raise BundleError(f"golden {what} contain NaN or Inf: a bad bundle, not a failed verification")
    return x, y


def _open_runners(root: Path, manifest: mf.Manifest, opts: VerifyOptions, notes: list[str]) -> list[runners.Runner]:
    """The runners, each opened only after its CPU was checked for the bundle's features (notes: what was not)."""
    if opts.native:
        notes += cpu_check.check(manifest, cpu_check.runner_cpu(root, manifest), "the native runner", local=True)
        return [runners.NativeRunner(root, manifest, opts.threads)]
    if opts.rpc:
        where = f"rpc {opts.rpc}"
        session = runners.connect_rpc(opts.rpc, opts.timeout)
        notes += cpu_check.check(manifest, cpu_check.session_cpu(session, manifest, where), where, local=False)
        return [runners.RpcRunner(session, root, manifest, where, opts.threads, opts.timeout)]
    if opts.tracker:
        if not opts.key:
            raise BundleError("--tracker needs --key (the device key registered with the tracker)")
        sessions = runners.connect_tracker(opts.tracker, opts.key, opts.devices, opts.timeout)
        wheres = [f"tracker {opts.tracker} key {opts.key} #{i}" for i in range(len(sessions))]
        for s, where in zip(sessions, wheres):
            said = cpu_check.check(manifest, cpu_check.session_cpu(s, manifest, where), where, local=False)
            notes += [n for n in said if n not in notes]
        return [runners.RpcRunner(s, root, manifest, where, opts.threads, opts.timeout) for s, where in zip(sessions, wheres)]
    if manifest.arch != host_arch():
        raise BundleError(
            f"this bundle is for {manifest.arch} and this machine is {host_arch()}: run verify on the device, "
            "or use --rpc HOST:PORT (a device or `bhvit-export emulate`), or --native (qemu)"
        )
    notes += cpu_check.check(manifest, cpu_check.this_cpu(), "this machine", local=True)
    return [runners.LocalRunner(root, manifest, opts.threads)]


def _pytorch_latency(manifest: mf.Manifest, opts: VerifyOptions) -> tuple[Optional[dict[str, Any]], list[str]]:
    """Time the PyTorch model of the bundle's architecture on this machine, when torch is here.

    Latency does not depend on the weights' values, so a model built from the manifest's config
    (random weights, frozen like the real one) times what the user's PyTorch model would.
    """
    if not opts.torch_latency or manifest.model.get("config") is None:
        return None, []
    try:
        import torch
    except ImportError:
        return None, ["torch is not installed here: no PyTorch latency"]
    from ..config import BHViTConfig
    from ..model import BHViT

    if opts.threads:
        torch.set_num_threads(opts.threads)
    model = BHViT(BHViTConfig.from_json(manifest.model["config"])).freeze()
    x = torch.zeros(manifest.input["shape"])
    ms = []
    with torch.no_grad():
        for i in range(opts.warmup + max(3, opts.runs // 2)):
            t = time.perf_counter()
            model(x)
            if i >= opts.warmup:
                ms.append((time.perf_counter() - t) * 1e3)
    return latency.summary(ms), []


def verify_bundle(path: str | Path, opts: VerifyOptions, progress: Optional[Progress] = None) -> VerifyReport:
    """Check, run and compare the bundle at ``path``; see the module docstring."""
    say = progress or (lambda _msg: None)
    criteria.check_flags(opts.tolerances)  # before anything is read or run
    from ..file_kinds import expect_bundle

    expect_bundle(Path(path))  # an .onnx or a checkpoint given by mistake: say which command takes it
    with open_bundle(Path(path)) as root:
        say("checking the manifest and the SHA-256 of every file")
        manifest = mf.check_bundle(root)
        notes = [n.line() for n in mf.version_notes(manifest)]
        criteria.check_manifest(manifest.tolerances)
        tol = {**manifest.tolerances, **opts.tolerances}
        x, ref = _golden(root, manifest)
        tol, ref_lines, ref_info = reference_checks(manifest.model.get("sensitivity"), ref, tol, opts.tolerances)
        results = []
        images = None
        for i, runner in enumerate(_open_runners(root, manifest, opts, notes)):
            try:
                if i == 0 and opts.images is not None:
                    images = _images(runner, manifest, opts, say)
                say(f"running {len(x)} golden inputs on {runner.where}")
                got = runner.run(x)
                if got.shape != ref.shape:
                    raise BundleError(f"the library returned {list(got.shape)}, the reference is {list(ref.shape)}")
                acc = compare(got, ref)
                ok, failed = acc.passes(tol)
                lat: list[float] = []
                if opts.runs > 0:
                    say(f"timing {opts.runs} runs after {opts.warmup} warm-up runs")
                    lat = runner.time(opts.runs, opts.warmup)
                results.append(DeviceResult(runner.where, acc, ok, failed, latency.summary(lat)))
            finally:
                runner.close()
        profile = blocks = None
        if opts.profile:
            profile, blocks, pnotes = _profile(root, manifest)
            notes += pnotes
        # PyTorch beside the compiled model only where both run on this CPU (not over RPC, not under qemu)
        here = not opts.rpc and not opts.tracker and manifest.arch == host_arch()
        torch_ms, tnotes = _pytorch_latency(manifest, opts) if here else (None, [])
        notes += tnotes
    return VerifyReport(
        bundle=str(path),
        target=manifest.target,
        batch=manifest.batch,
        golden_source=str(manifest.golden.get("source", "?")),
        tolerances=tol,
        devices=results,
        notes=notes,
        pytorch_latency_ms=torch_ms,
        profile=profile,
        images=images,
        profile_blocks=blocks,
        reference=ref_info,
        reference_lines=ref_lines,
    )


def _images(runner: runners.Runner, manifest: mf.Manifest, opts: VerifyOptions, say: Progress) -> dict[str, Any]:
    """Top-1 on ``--images`` through ``runner`` (and the ``--reference`` model, if given)."""
    from .images import accuracy_on_images, reference_runner

    assert opts.images is not None
    size = int(manifest.input["shape"][-1])
    classes = int(manifest.output["shape"][-1])
    ref = reference_runner(opts.reference, size, classes) if opts.reference is not None else None
    return accuracy_on_images(opts.images, runner.run, manifest.batch, size, ref, opts.images_limit, say, classes, opts.labels)


def _profile(root: Path, manifest: mf.Manifest) -> tuple[Optional[list[dict[str, Any]]], Optional[list[dict[str, Any]]], list[str]]:
    """Per-function latency of the compiled model (this machine only), with the model layers it runs."""
    if manifest.arch != host_arch() or manifest.device != "cpu":
        return None, None, ["--profile runs on this machine's CPU only"]
    if not cpu_check.runs_here(manifest):
        return None, None, ["--profile: this CPU lacks features the bundle was built for"]
    try:
        import tvm

        from bhvit_export.targets.profile import profile_calls
    except ImportError:
        return None, None, ["--profile is unavailable in this build"]
    from ..layer_map import LAYERS_FILE, profile_rows, read_layers

    lib = tvm.runtime.load_module(str(root / mf.LIBRARY))
    calls = profile_calls(lib, np.zeros(manifest.input["shape"], dtype=np.float32))
    rows, blocks = profile_rows(calls, read_layers(root / LAYERS_FILE))
    notes = [] if blocks else ["--profile: no model-layer map in this bundle (compiled by an older bhvit-export); functions only"]
    return rows, blocks or None, notes
