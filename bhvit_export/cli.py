"""The ``bhvit-export`` command line: parse options, call one library function, print its report.

Kept thin on purpose: every behaviour worth testing lives in the library (``checkpoint``,
``export.convert``, ...), which never imports click. Heavy modules (torch, onnx, tvm) are imported
inside the commands, so ``--help`` and ``--version`` answer at once.

Errors: a :class:`~bhvit_export.errors.BhvitError` becomes one line ``error: <message>`` on stderr
and its exit code (2 for bad input, 1 for a failed verification); click usage errors exit 2;
Ctrl-C exits 130 and SIGTERM 143 (both unwind through ``atomic_path``, so nothing partial is left);
a missing optional package (tvm, onnxruntime, ...) is an environment error, exit 2, naming what to
pip install; anything else is a bug in this tool: one line, exit 3, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .checkpoint import ENTRIES  # light: torch is imported inside load_checkpoint
from .errors import BhvitError

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process killed by it
EXIT_BUG = 3
#: Top-level modules imported lazily by the commands -> the distribution that provides them.
OPTIONAL_PACKAGES = {
    "tvm": "apache-tvm",
    "tvm_ffi": "apache-tvm-ffi",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "torch": "torch",
    "PIL": "pillow",
    "matplotlib": "matplotlib",
}


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of :func:`main`.

    A KeyboardInterrupt so that it unwinds exactly like Ctrl-C: ``atomic_path`` removes its temporary
    output and every ``except KeyboardInterrupt`` (e.g. ``emulate``) stops cleanly. Without a
    handler, SIGTERM kills the process on the spot and leaves the hidden ``.NAME.*.tmp`` behind.
    """


def _on_sigterm(_signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated()


def _fail(ctx: click.Context, line: str, code: int) -> NoReturn:
    if ctx.find_root().meta.get("bhvit.debug"):
        traceback.print_exc(file=sys.stderr)
    click.echo(line, err=True)
    ctx.exit(code)


class _Cli(click.Group):
    """A click group that turns library exceptions into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BhvitError as e:
            _fail(ctx, f"error: {e}", e.exit_code)
        except Terminated:
            _fail(ctx, "error: terminated (SIGTERM); nothing was written", EXIT_TERMINATED)
        except KeyboardInterrupt:
            _fail(ctx, "error: interrupted; nothing was written", EXIT_INTERRUPTED)
        except Exception as e:  # a missing optional package, else a bug in this tool
            top = (e.name or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
            if top in OPTIONAL_PACKAGES:
                _fail(
                    ctx,
                    f"error: this command needs the Python package '{top}', which is not installed "
                    f"(pip install {OPTIONAL_PACKAGES[top]})",
                    2,
                )
            first = str(e).splitlines()[0] if str(e) else ""
            _fail(
                ctx,
                f"error: unexpected {type(e).__name__}: {first} "
                "(a bug in bhvit-export; rerun with --debug for the traceback and report it)",
                EXIT_BUG,
            )


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of any error.")
@click.version_option(__version__, "--version", prog_name="bhvit-export")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export BHViT checkpoints of the official training code to ONNX (and later TVM)."""
    ctx.meta["bhvit.debug"] = debug


@cli.command("to-onnx")
@click.argument("ckpt", type=click.Path(path_type=Path, dir_okay=True))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option(
    "--reference",
    is_flag=True,
    help="Write the float reference graph (Sign + float MatMul/Conv) instead of the fused bhvit ops.",
)
@click.option(
    "--entry",
    type=click.Choice(ENTRIES),
    default="auto",
    show_default=True,
    help="Which weights of the checkpoint: auto tries model, state_dict, model_ema, then a bare state_dict.",
)
@click.option(
    "--config",
    "config_json",
    type=click.Path(path_type=Path),
    help="The official config.json; refuse to export if it disagrees with the weights.",
)
@click.option(
    "--opset",
    type=click.IntRange(min=17),
    default=None,
    help="ONNX opset [default: the reference exporter's; a fused export uses the one the passes need].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (nothing else).")
def to_onnx(ckpt: Path, out: Path, reference: bool, entry: str, config_json: Path | None, opset: int | None, as_json: bool) -> None:
    """Convert checkpoint CKPT (.pth of the official training code) to ONNX."""
    from .export.convert import convert_checkpoint

    report = convert_checkpoint(
        ckpt,
        out,
        reference=reference,
        entry=entry,
        config_json=config_json,
        opset=opset,
        progress=None if as_json else (lambda msg: click.echo(f"... {msg}")),
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for line in report.lines():
            click.echo(line)


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the census as JSON on stdout (nothing else).")
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Op census, BOPs/FLOPs/OPs, parameters and size of MODEL (.onnx), beside the paper's Table 2."""
    from .census import format_report, inspect_file

    c = inspect_file(model)
    click.echo(json.dumps(c.to_json(), indent=2, sort_keys=True) if as_json else format_report(c))


def _say(as_json: bool):
    """Progress lines on stderr (stdout stays clean for --json)."""
    return None if as_json else (lambda msg: click.echo(f"... {msg}", err=True))


@cli.command("compile")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--target",
    "-t",
    default="x86_64",
    show_default=True,
    help="x86_64 (this CPU unless --mcpu), aarch64 (cortex-a72 unless --mcpu), jetson-orin, a TVM tag "
    "(raspberry-pi/4b-aarch64, nvidia/jetson-orin-nano, ...) or a JSON target (inline or a .json file).",
)
@click.option("--mcpu", default=None, help="CPU model for x86_64/aarch64 (e.g. haswell, cortex-a76).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write (or NAME.tar).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="The batch size compiled in.")
@click.option("--golden-inputs", type=click.Path(path_type=Path, dir_okay=False), help="Own golden inputs (.npy float32 [N,3,S,S]).")
@click.option("--golden-outputs", type=click.Path(path_type=Path, dir_okay=False), help="Their reference logits (.npy [N,classes]).")
@click.option("--no-native", is_flag=True, help="Do not add the native C++ runner and the TVM runtime libraries.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (progress still goes to stderr unless --json).")
def compile_cmd(model: Path, target: str, mcpu: str | None, out: Path, batch: int, golden_inputs: Path | None,
                golden_outputs: Path | None, no_native: bool, as_json: bool) -> None:
    """Compile MODEL (a fused .onnx from to-onnx) with TVM into a deploy bundle for a target."""
    from .compile import compile_model

    report = compile_model(
        model, out, target=target, mcpu=mcpu, batch=batch, golden_inputs=golden_inputs,
        golden_outputs=golden_outputs, native=not no_native, progress=_say(as_json),
    )
    click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if as_json else "\n".join(report.lines()))


def _tolerance_options(f):
    f = click.option("--min-cosine", type=float, default=None, help="Pass criterion [bundle: 0.9995].")(f)
    f = click.option("--max-abs-over-std", type=float, default=None, help="Pass criterion: max |diff| / std(reference) [bundle: 0.05].")(f)
    f = click.option("--min-top1", type=float, default=None, help="Pass criterion: top-1 agreement fraction [bundle: 1.0].")(f)
    return f


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=0), default=20, show_default=True, help="Timed runs (0: accuracy only).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads of the TVM runtime (and of PyTorch).")
@click.option("--rpc", default=None, metavar="HOST:PORT", help="Run on the device serving TVM RPC there (a board, or `bhvit-export emulate`).")
@click.option("--tracker", default=None, metavar="HOST:PORT", help="Get devices from this TVM RPC tracker (needs --key).")
@click.option("--key", default=None, help="Device key registered with the tracker.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="With --tracker: how many devices of the key to verify on.")
@click.option("--native", is_flag=True, help="Use the bundle's C++ runner (under qemu for a foreign arch) instead of Python TVM.")
@click.option("--profile", is_flag=True, help="Per-function latency of the compiled model (this machine's CPU).")
@click.option("--no-torch", is_flag=True, help="Do not time the PyTorch reference even if torch is installed.")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None, help="ImageFolder of labeled images: top-1 of the compiled model (and of --reference).")
@click.option("--limit", "images_limit", type=click.IntRange(min=1), default=None, help="With --images: only the first N images.")
@click.option("--reference", "reference", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --images: the reference model (.onnx via onnxruntime, or the checkpoint via PyTorch).")
@_tolerance_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_cmd(bundle: Path, runs: int, warmup: int, threads: int | None, rpc: str | None, tracker: str | None,
               key: str | None, devices: int, native: bool, profile: bool, no_torch: bool, images: Path | None,
               images_limit: int | None, reference: Path | None, min_cosine: float | None,
               max_abs_over_std: float | None, min_top1: float | None, as_json: bool) -> None:
    """Check BUNDLE's files, run its golden inputs and compare with the reference; time it.

    Exit 0 when within the tolerances, 1 when not, 2 for a bad or altered bundle.
    """
    from .errors import BundleError, VerificationFailed
    from .verify.verify import VerifyOptions, verify_bundle

    if sum(bool(v) for v in (rpc, tracker, native)) > 1:
        raise BundleError("choose one of --rpc, --tracker and --native")
    tol = {k: v for k, v in (("min_cosine", min_cosine), ("max_abs_over_std", max_abs_over_std),
                             ("min_top1_agreement", min_top1)) if v is not None}
    opts = VerifyOptions(runs=runs, warmup=warmup, threads=threads, rpc=rpc, tracker=tracker, key=key,
                         devices=devices, native=native, tolerances=tol, torch_latency=not no_torch, profile=profile,
                         images=images, images_limit=images_limit, reference=reference)
    report = verify_bundle(bundle, opts, progress=_say(as_json))
    click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if as_json else "\n".join(report.lines()))
    if not report.passed:
        raise VerificationFailed("the compiled model's outputs are outside the tolerances")


@cli.command("emulate")
@click.option("--arch", type=click.Choice(["aarch64"]), default="aarch64", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True)
def emulate_cmd(arch: str, host: str, port: int) -> None:
    """Serve TVM RPC as an emulated ARM device (qemu-user) until stopped (Ctrl-C)."""
    from targets.emulate import serve

    serve(arch, host, port, on_ready=lambda h, p: click.echo(f"emulated {arch} device serving TVM RPC on {h}:{p} (Ctrl-C stops it)", err=True))


@cli.command("bench")
@click.option("--model", "models", multiple=True, type=click.Choice(["tiny", "small"]), help="Model size(s) [default: tiny and small].")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), help="Batch size(s) [default: 1 and 8].")
@click.option("--threads", "threads", multiple=True, type=click.IntRange(min=1), help="Thread count(s) [default: 1 and 2].")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True, help="Interleaved timed rounds per configuration.")
@click.option("--system", "include", multiple=True, type=click.Choice(["bhvit", "onnxruntime_fp32", "tvm_fp32", "pytorch"]), help="Systems to time [default: all four].")
@click.option("--kernels", is_flag=True, help="Also the kernel table: binary GEMM shapes vs the popcount roofline and onnxruntime fp32.")
@click.option("--breakdown", is_flag=True, help="Also the per-function time of our compiled model (first configuration).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write a PNG of the results here.")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), default=None, help="Where compiled models are cached [~/.cache/bhvit-export/bench].")
@click.option("--arm", is_flag=True, help="Estimate Cortex-A55/A72/A76/A78 latency (qemu block counts x llvm-mca), ours vs TVM fp32 and onnxruntime aarch64, checked on x86; with --kernels: the kernels' inner loops vs the NEON limit.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def bench_cmd(models, batches, threads, rounds, include, kernels, breakdown, plot, cache, arm, as_json) -> None:
    """Time PyTorch, onnxruntime fp32, TVM fp32 and our bundle side by side, interleaved, on this machine."""
    if arm:
        from benchmarks.arm_cli import bench_arm

        click.echo(bench_arm(models, include, kernels, cache, as_json, lambda m: click.echo(f"... {m}", err=True)))
        return
    from benchmarks.report import run_bench

    report = run_bench(
        models=models or ("tiny", "small"), batches=batches or (1, 8), threads=threads or (1, 2),
        rounds=rounds, include=include or None, kernels=kernels, breakdown=breakdown, plot=plot, cache=cache,
        say=_say(as_json) or (lambda _m: None),
    )
    click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if as_json else report.text())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``bhvit-export``) and ``python -m bhvit_export``.

    SIGTERM (``kill``, a CI timeout, systemd) is turned into :class:`Terminated` here, not in the
    click group, so that tests invoking ``cli`` in-process keep their own signal handling.
    """
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="bhvit-export")
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
