"""What ``--target`` and ``--mcpu`` accept, listed (``bhvit-export targets``) and suggested on a typo.

One list for both uses, so the suggestions and the listing can never disagree: our short names, the
TVM tags that resolve to a target we build for (an llvm CPU of our two architectures, or CUDA), and
the CPUs LLVM knows for each architecture (ours checked first).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from bhvit_export.targets.arch import ARCHES

#: Our names, what each means: one per architecture record, then the GPU devices.
SHORT_NAMES = {
    **{rec.name: rec.description for rec in ARCHES.values()},
    "jetson-orin": "Jetson Orin: CUDA sm_87, Cortex-A78 host",
    "cuda-sm90": "an NVIDIA GPU of compute capability 9.0 (H100/H200) on an x86-64 host; cuda-smNN for others",
}
#: String and JSON forms, shown in the listing.
FORMS = (
    '"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53"  (a TVM target string)',
    '"cuda -arch=sm_87"  (a TVM target string; the host is this machine)',
    '\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}\'  (JSON, inline or a .json file)',
)


@dataclass
class Catalog:
    names: dict[str, str]
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # tag -> {arch, device}
    cpus: dict[str, list[str]] = field(default_factory=dict)  # arch -> CPUs (checked ones first)
    checked_cpus: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "tags": self.tags, "cpus": self.cpus, "checked_cpus": self.checked_cpus,
                "forms": list(FORMS)}

    def lines(self) -> list[str]:
        out = ["our names (--target):"]
        out += [f"  {n:<14} {d}" for n, d in self.names.items()]
        out.append("TVM target strings and JSON:")
        out += [f"  {f}" for f in FORMS]
        by_kind: dict[str, list[str]] = {}
        for t, info in sorted(self.tags.items()):
            by_kind.setdefault(f"{info['device']} ({info['arch']} host)", []).append(t)
        out.append(f"TVM tags that resolve to a target we build for ({len(self.tags)}):")
        for kind, tags in by_kind.items():
            out.append(f"  {kind}: {', '.join(tags)}")
        for arch, cpus in self.cpus.items():
            checked = self.checked_cpus.get(arch, [])
            out.append(f"CPUs for {arch} (--mcpu; checked with our kernels: {', '.join(checked) or 'any'}; {len(cpus)} known to LLVM):")
            out.append("  " + ", ".join(cpus))
        return out


def cpus(arch: str) -> list[str]:
    """CPUs LLVM (inside TVM) knows for ``arch`` (:func:`bhvit_export.targets.mcpu.known_cpus`, sorted)."""
    from bhvit_export.targets.mcpu import known_cpus

    from bhvit_export.targets.arch import arch_record

    return sorted(known_cpus(arch_record(arch).triple))


def working_tags() -> dict[str, dict[str, str]]:
    """TVM tags that :func:`bhvit_export.targets.target_spec.resolve` accepts, with their arch and device."""
    from tvm.target import tag

    from bhvit_export.errors import TargetError
    from bhvit_export.targets.target_spec import resolve

    out = {}
    for name in sorted(tag.list_tags()):
        try:
            spec = resolve(name)
        except TargetError:
            continue
        out[name] = {"arch": spec.arch, "device": spec.device}
    return out


def catalog() -> Catalog:
    import tvm  # noqa: F401  (LLVM's CPU lists come from TVM's LLVM)

    return Catalog(
        names=dict(SHORT_NAMES),
        tags=working_tags(),
        cpus={name: cpus(name) for name in ARCHES},
        checked_cpus={name: list(rec.checked_cpus) for name, rec in ARCHES.items()},
    )


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """`` (did you mean a, b?)`` for the closest ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def target_suggestion(name: str) -> str:
    """Closest short names and TVM tags to a mistyped ``--target``."""
    from tvm.target import tag

    return did_you_mean(name, list(SHORT_NAMES) + [str(t) for t in tag.list_tags()])
