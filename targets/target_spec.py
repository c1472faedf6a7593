"""What ``compile --target`` accepts, resolved to one TVM target plus the facts a bundle needs.

Users name devices (``x86_64``, ``aarch64``, ``jetson-orin``), TVM tags (``raspberry-pi/4b-aarch64``,
``nvidia/jetson-orin-nano``) or write a TVM target as JSON. Everything downstream (the build, the
cross compiler that links the library, whether a native runner or qemu is needed, what ``verify``
checks) only depends on the target's architecture and device kind, so those are decided here, once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import tvm

from bhvit_export.errors import TargetError
from bhvit_export.targets.arch import AARCH64, ARCHES, X86_64, ArchRecord, arch_for_triple
from bhvit_export.targets.mcpu import check_mcpu, check_mcpu_name
from bhvit_export.targets.toolchain import host_arch

#: Orin's CPU cores; TVM's ``nvidia/jetson-orin-nano`` tag says ``carmel`` (Xavier's), which is wrong.
ORIN_HOST = {"kind": "llvm", "mtriple": AARCH64.triple, "mcpu": "cortex-a78", "mattr": list(AARCH64.base_mattr)}
#: CPUs ``--mcpu`` accepts for ``aarch64`` without a warning (what our NEON schedules were checked on).
ARM_CPUS = AARCH64.checked_cpus
#: Our names: one per architecture record, and the GPU devices.
SHORT_NAMES = (*ARCHES, "jetson-orin", "cuda-sm90")
#: ``cuda-smNN``: an NVIDIA GPU of compute capability N.N on an x86-64 host (``cuda-sm90``: H100/H200),
#: the same kernels as ``jetson-orin`` (sm_87) built for another arch, so a data-centre GPU can stand in.
_CUDA_SM = re.compile(r"cuda-sm(\d{2,3})")


@dataclass(frozen=True)
class TargetSpec:
    """A resolved ``--target``: the TVM target and what the bundle, linker and verify need to know."""

    name: str  # what the user asked for
    target: tvm.target.Target
    arch: str  # of the CPU that runs the library: a name of ``bhvit_export.targets.arch.ARCHES``
    device: str  # "cpu" or "cuda"

    @property
    def host(self) -> tvm.target.Target:
        """The CPU part (the target itself for CPU targets)."""
        return self.target.host if self.target.host is not None else self.target

    @property
    def is_cross(self) -> bool:
        """True when the library cannot be loaded on this machine (other arch, or CUDA)."""
        return self.arch != host_arch() or self.device != "cpu"

    def to_json(self) -> dict[str, Any]:
        from bhvit_export.targets.cpu_features import target_cpu, target_features

        return {
            "name": self.name,
            "tvm": json.loads(json.dumps(_plain(self.target.export()))),
            "arch": self.arch,
            "device": self.device,
            # what verify checks the CPU for before loading the library (LLVM feature names)
            "cpu": target_cpu(self.host),
            "cpu_features": target_features(self.host),
        }


def _plain(obj: Any) -> Any:
    """Target.export() contains tuples and TVM containers; make it JSON-able and stable."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ in ("Array", "List"):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if type(obj).__name__ in ("Map", "Dict"):
        return {str(k): _plain(v) for k, v in sorted(dict(obj).items())}
    return str(obj)


def _arch_of(cpu: tvm.target.Target) -> str:
    """The architecture record's name for an llvm target (by its triple; this host's without one)."""
    triple = str(cpu.attrs.get("mtriple", "")) if cpu.attrs is not None else ""
    rec = arch_for_triple(triple)
    if rec is not None:
        return rec.name
    feature = next((r.name for r in ARCHES.values() if bool(cpu.attrs.get(f"feature.is_{r.name}", False))), None)
    if feature is not None:
        return feature
    if triple.startswith(("arm", "thumb")):
        raise TargetError(f"32-bit Arm ({triple}) is not supported: use an aarch64 target")
    if triple:
        raise TargetError(f"unsupported CPU triple {triple!r}: {' and '.join(ARCHES)} are supported")
    return host_arch()


def _make(obj: Any, what: str) -> tvm.target.Target:
    try:
        return tvm.target.Target(obj)
    except Exception as e:  # TVM raises ValueError / TVMError with long texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(f"{what}: {first}") from None


#: A TVM target as JSON is a few hundred bytes; 64 KiB is room for any host/device pair.
MAX_TARGET_JSON_BYTES = 64 * 1024


def _json_target(text: str, what: str) -> tvm.target.Target:
    from bhvit_export.limits import parse_json

    obj = parse_json(text, what, TargetError, MAX_TARGET_JSON_BYTES)
    if not isinstance(obj, dict) or "kind" not in obj:
        raise TargetError(f"{what}: a JSON target must be an object with a \"kind\"")
    if obj.get("kind") == "llvm" and isinstance(obj.get("mcpu"), str):
        check_mcpu_name(obj["mcpu"], str(obj.get("mtriple") or ""), what)
    return _make(obj, what)


def _check_supported(tgt: tvm.target.Target, name: str) -> tuple[str, str]:
    kind = tgt.kind.name
    if kind == "llvm":
        return _arch_of(tgt), "cpu"
    if kind == "cuda":
        host = tgt.host
        return (_arch_of(host) if host is not None else host_arch()), "cuda"
    raise TargetError(f"--target {name}: TVM target kind {kind!r} is not supported (llvm CPUs and cuda are)")


def _arch_target(rec: ArchRecord, mcpu: Optional[str]) -> tvm.target.Target:
    """The llvm target of our short name for ``rec``: its triple, the CPU (``--mcpu``, the record's
    default, or this machine's CPU with its exact features) and the record's mattr for that CPU."""
    from bhvit_export.targets.kernels.target_info import host_target

    if not rec.default_cpu and mcpu in (None, "native"):  # this CPU: its LLVM name and its exact features
        if host_arch() != rec.name:
            raise TargetError(f"--target {rec.name} on a non-{rec.name} host needs --mcpu (e.g. --mcpu {rec.checked_cpus[0]})")
        here = host_target()
        attrs: dict[str, Any] = {"mcpu": str(here.attrs["mcpu"])}
        if "mattr" in here.attrs:
            attrs["mattr"] = list(here.attrs["mattr"])
    else:
        cpu = mcpu or rec.default_cpu
        check_mcpu_name(cpu, rec.triple, f"--mcpu {cpu}")
        dot = [f"+{f}" for unit in rec.vector_units for f in unit.dot_requires] if cpu in rec.dotprod_cpus else []
        mattr = list(rec.base_mattr) + dot
        attrs = {"mcpu": cpu, **({"mattr": mattr} if mattr else {})}
    return _make({"kind": "llvm", "mtriple": rec.triple, **attrs}, f"--mcpu {attrs['mcpu']}")


def resolve(name: str, *, mcpu: Optional[str] = None) -> TargetSpec:
    """Resolve a ``--target`` value (and ``--mcpu``) into a :class:`TargetSpec`.

    Raises :class:`TargetError` (exit 2) for unknown names, bad JSON or unsupported kinds.
    """
    from bhvit_export.targets.catalog import target_suggestion
    from bhvit_export.targets.target_string import looks_like_target_string, parse_target_string

    what = f"--target {name}"
    if name in ARCHES:
        tgt = _arch_target(ARCHES[name], mcpu)
    elif name == "jetson-orin":
        if mcpu is not None:
            raise TargetError("--mcpu does not apply to jetson-orin (its CPU is cortex-a78)")
        tgt = _make(tvm.target.Target("nvidia/jetson-orin-nano"), what)
        tgt = tvm.target.Target(tgt, host=ORIN_HOST)
    elif _CUDA_SM.fullmatch(name):
        if mcpu is not None:
            raise TargetError(f"--mcpu does not apply to {name} (its host is generic x86-64)")
        sm = _CUDA_SM.fullmatch(name).group(1)  # type: ignore[union-attr]
        tgt = _make({"kind": "cuda", "arch": f"sm_{sm}", "host": {"kind": "llvm", "mtriple": X86_64.triple}}, what)
    elif name.lstrip().startswith("{"):
        tgt = _json_target(name, what)
    elif name.endswith(".json"):
        path = Path(name)
        from bhvit_export.limits import read_bytes

        data = read_bytes(path, "--target", TargetError, MAX_TARGET_JSON_BYTES)
        tgt = _json_target(data.decode("utf-8", errors="replace"), what)
    elif looks_like_target_string(name):  # "llvm -mtriple=... -mcpu=...": TVM 0.27 only takes dicts
        tgt = _make(parse_target_string(name), what)
    elif "/" in name:
        from tvm.target import tag

        if name not in tag.list_tags():
            raise TargetError(
                f"{what}: unknown TVM target tag{target_suggestion(name)} (try {', '.join(SHORT_NAMES)}, "
                "raspberry-pi/4b-aarch64, nvidia/jetson-orin-nano, or a JSON target; `bhvit-export targets` lists them)"
            )
        tgt = _make(name, what)
    else:
        raise TargetError(
            f"{what}: unknown target{target_suggestion(name)}; use one of {', '.join(SHORT_NAMES)}, a TVM tag such as "
            "raspberry-pi/4b-aarch64, a TVM target string like \"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53\", "
            "or a JSON target like '{\"kind\": \"llvm\", \"mcpu\": \"haswell\"}' (`bhvit-export targets` lists them)"
        )
    if mcpu is not None and name not in ARCHES:
        raise TargetError(f"--mcpu applies to the {' and '.join(ARCHES)} targets only, not {name}")
    arch, device = _check_supported(tgt, name)
    check_mcpu(tgt, f"--mcpu {mcpu}" if mcpu is not None else what)
    return TargetSpec(name=name, target=tgt, arch=arch, device=device)
