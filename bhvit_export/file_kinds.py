"""What a file given on the command line is, so a mix-up is answered with the command that takes it.

Users hand ``to-onnx`` an ``.onnx``, ``compile`` a checkpoint or a folder, ``verify`` an ``.onnx``:
the command's own loader would then report a low-level failure (``unreadable pickle data``, a
protobuf ``DecodeError``). Sniffing the first bytes (and, for a folder, its entries) is enough to say
what the file is and which command takes it. Nothing is unpickled or executed here: a zip is listed,
an ONNX is parsed as protobuf only, a library is recognised by its ELF magic.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import BhvitError, BundleError, CheckpointError, ModelFileError

#: What each kind of file is called in messages, and the command line that takes it.
KINDS = {
    "checkpoint": ("a PyTorch checkpoint", "run `bhvit-export to-onnx {p} -o MODEL.onnx` on it"),
    "onnx-fused": ("a fused BHViT ONNX model (from to-onnx)", "run `bhvit-export compile {p} -o BUNDLE` on it"),
    "onnx-reference": (
        "the float reference ONNX (from to-onnx --reference)",
        "compile takes it with --allow-float (float only); for the binary kernels run to-onnx without --reference",
    ),
    "onnx": ("an ONNX model", "run `bhvit-export compile {p} -o BUNDLE` on it"),
    "bundle": ("a bundle (from compile)", "run `bhvit-export verify {p}` on it"),
    "library": ("a compiled library (model.so of a bundle)", "run `bhvit-export verify {d}` on the bundle that holds it"),
    "npy": ("a numpy array (.npy)", "compile takes it as --golden-inputs/--golden-outputs"),
    "checkpoint-folder": ("a folder holding checkpoint.pth", "run `bhvit-export to-onnx {p}/checkpoint.pth -o MODEL.onnx`"),
    "onnx-folder": ("a folder of .onnx files", "run `bhvit-export compile {p}/MODEL.onnx -o BUNDLE` on one of them"),
    "folder": ("a folder without a bundle, checkpoint or ONNX model", ""),
}


@dataclass(frozen=True)
class FileKind:
    kind: str
    path: Path

    @property
    def what(self) -> str:
        return KINDS[self.kind][0]

    def takes_it(self) -> str:
        """``; <which command takes it>`` (empty when none does)."""
        hint = KINDS[self.kind][1].format(p=self.path, d=self.path.parent)
        return f"; {hint}" if hint else ""


def _onnx_kind(path: Path) -> Optional[str]:
    """``onnx-fused``/``onnx-reference``/``onnx`` if ``path`` parses as an ONNX model with nodes."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or onnx missing: not something we can name
        return None
    if not model.graph.node:
        return None
    from bhvit_export.passes.op_schema import DOMAIN

    domains = {n.domain for n in model.graph.node}
    if DOMAIN in domains:
        return "onnx-fused"
    if any(p.key == "bhvit.golden" for p in model.metadata_props):
        return "onnx-reference"
    return "onnx"


def _is_bundle_manifest(path: Path) -> bool:
    """A ``manifest.json`` written by ``compile`` (``"format": "bhvit-bundle"``), not any manifest."""
    if not path.is_file() or path.stat().st_size > 16 << 20:
        return False
    try:
        obj = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("format") == "bhvit-bundle"


def identify(path: Path) -> Optional[FileKind]:
    """The kind of ``path``, or None when it is missing or nothing we recognise."""
    try:
        if path.is_dir():
            if _is_bundle_manifest(path / "manifest.json"):
                return FileKind("bundle", path)
            if (path / "checkpoint.pth").is_file():
                return FileKind("checkpoint-folder", path)
            if any(path.glob("*.onnx")):
                return FileKind("onnx-folder", path)
            return FileKind("folder", path)
        if not path.is_file():
            return None
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"\x7fELF"):
        return FileKind("library", path)
    if head.startswith(b"\x93NUMPY"):
        return FileKind("npy", path)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return FileKind("checkpoint", path)
        except (zipfile.BadZipFile, OSError):
            pass
        return None
    if head[:1] == b"\x80" and path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return FileKind("checkpoint", path)  # the legacy (pre-zip) torch.save format: a pickle stream
    if len(head) >= 262 and head[257:262] == b"ustar":
        try:
            with tarfile.open(path) as t:
                if "manifest.json" in {m.name.lstrip("./") for m in t.getmembers()}:
                    return FileKind("bundle", path)
        except (tarfile.TarError, OSError):
            pass
        return None
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), varint: how every ONNX file starts
        kind = _onnx_kind(path)
        if kind:
            return FileKind(kind, path)
    return None


def expect(path: Path, command: str, wanted: str, accepted: tuple[str, ...], error: type[BhvitError]) -> None:
    """Raise ``error`` naming what ``path`` is and which command takes it, unless it is ``accepted``.

    Unknown files pass: the command's own loader then says what is wrong with them.
    """
    found = identify(path)
    if found is None or found.kind in accepted:
        return
    raise error(f"{path} is {found.what}, but `bhvit-export {command}` takes {wanted}{found.takes_it()}")


def expect_checkpoint(path: Path) -> None:
    """For ``to-onnx``: a checkpoint file (a plain folder or an unknown file: the loader judges)."""
    expect(path, "to-onnx", "a checkpoint (.pth) of the official training code", ("checkpoint", "folder"), CheckpointError)


def expect_onnx(path: Path) -> None:
    """For ``compile``: an ONNX file."""
    expect(path, "compile", "the .onnx written by `bhvit-export to-onnx CKPT -o MODEL.onnx`",
           ("onnx-fused", "onnx-reference", "onnx"), ModelFileError)


def expect_bundle(path: Path) -> None:
    """For ``verify``: a bundle folder or ``.tar`` (a plain folder: the manifest check judges)."""
    expect(path, "verify", "a bundle written by `bhvit-export compile MODEL.onnx -o BUNDLE`", ("bundle", "folder"), BundleError)
