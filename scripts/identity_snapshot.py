"""Snapshot what a refactor must not change: fused ONNX bytes, ``inspect`` output, imported Relax/TIR.

    python scripts/identity_snapshot.py /tmp/before            # on the old commit
    python scripts/identity_snapshot.py /tmp/after             # on the new one
    diff -r /tmp/before /tmp/after && echo identical

For the four micro fixtures: the fused ONNX (and reference) bytes and ``inspect`` text + JSON; for
micro, micro-gsb and micro-binary-embed: ``import_fused(...).script()`` for x86_64 (this CPU),
haswell, aarch64 (Cortex-A72, A55) and jetson-orin, plus packed=False and the opt-in packed QD
context for micro. Runs on commits before and after the lowering context (``PACKED_QD_CONTEXT``
or the ``overrides`` argument). Takes about two minutes. Extra arguments ``onnx`` / ``tvm`` limit
it to one half.
"""
import hashlib
import json
import sys
from pathlib import Path

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
what = sys.argv[2:] or ["onnx", "tvm"]
from tests.helpers import OFFICIAL as FIX  # run from the repository root

from bhvit_export.checkpoint import load_checkpoint
from bhvit_export.export.reference import export_reference
from bhvit_export.census import format_report, inspect_file
from bhvit_export.passes.pipeline import fuse_model

fused = {}
for name in ["micro", "micro-binary-embed", "micro-gsb", "micro-ln-nols"]:
    d = FIX / name
    ref = export_reference(load_checkpoint(d / "checkpoint.pth", config_json=d / "config.json").model)
    f = fuse_model(ref)
    fused[name] = f
    if "onnx" in what:
        b = f.SerializeToString()
        (out / f"{name}.fused.onnx").write_bytes(b)
        (out / f"{name}.ref.onnx").write_bytes(ref.SerializeToString())
        for kind in ("fused", "ref"):
            c = inspect_file(out / f"{name}.{kind}.onnx")
            (out / f"{name}.{kind}.inspect.txt").write_text(format_report(c) + "\n" + json.dumps(c.to_json(), indent=1, sort_keys=True))
        print(name, hashlib.sha256(b).hexdigest()[:16], flush=True)

if "tvm" in what:
    from bhvit_export.targets.importer import import_fused
    from bhvit_export.targets.target_spec import resolve
    from bhvit_export.targets import converters
    targets = {"x86_64": resolve("x86_64").target, "haswell": resolve("x86_64", mcpu="haswell").target,
               "aarch64": resolve("aarch64").target, "a55": resolve("aarch64", mcpu="cortex-a55").target,
               "orin": resolve("jetson-orin").target}
    for name in ["micro", "micro-gsb", "micro-binary-embed"]:
        for tname, tgt in targets.items():
            for variant in ("packed", "float", "qd"):
                if variant != "packed" and (name != "micro" or tname not in ("x86_64", "aarch64", "orin")):
                    continue
                kw = {"target": tgt, "packed": variant != "float"}
                if variant == "qd":
                    if hasattr(converters, "PACKED_QD_CONTEXT"):
                        converters.PACKED_QD_CONTEXT = True
                    else:
                        kw["overrides"] = {"QDAttentionContext": ("qd_context",)}
                mod = import_fused(fused[name], batch=1, **kw)
                if hasattr(converters, "PACKED_QD_CONTEXT"):
                    converters.PACKED_QD_CONTEXT = False
                (out / f"{name}.{tname}.{variant}.py").write_text(mod.script())
                print(name, tname, variant, flush=True)
