"""The ``bhvit-export`` command line: parse options, call one library function, print its report.

Kept thin on purpose: every behaviour worth testing lives in the library (``checkpoint``,
``export.convert``, ...), which never imports click. Heavy modules (torch, onnx, tvm) are imported
inside the commands, so ``--help`` and ``--version`` answer at once.

Errors: a :class:`~bhvit_export.errors.BhvitError` becomes one line ``error[<stage>]: <message>`` on
stderr (the stage of its class: ``checkpoint``, ``export``, ``passes``, ``target``, ``compile``, ...)
and its exit code (2 for bad input, 1 for a failed verification); click usage errors exit 2;
Ctrl-C exits 130 and SIGTERM 143 (both unwind through ``atomic_path``, so nothing partial is left);
a missing optional package (tvm, onnxruntime, ...) is an environment error, exit 2, naming what to
pip install; anything else is a bug in this tool: one line, exit 3, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from . import cli_examples as ex
from .checkpoint import ENTRIES  # light: torch is imported inside load_checkpoint
from .errors import BhvitError
from .limits import DEFAULT_TIMEOUT_S, MAX_RUNS, MAX_THREADS
from bhvit_export.targets.toolchain import emulated_arches  # light: the architecture records, no TVM

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


def _json_mode(ctx: click.Context, _param: Any, value: bool) -> bool:
    """``--json`` callback: remember it, so that an error is also printed as a JSON object on stdout."""
    if value:
        ctx.find_root().meta["bhvit.json"] = ctx.info_name
    return value


def _json_dump(command: str, body: dict[str, Any], outputs: tuple[Path, ...] = ()) -> str:
    """A report with the shared envelope (schema version, versions, SHA-256 of the outputs)."""
    from .report import envelope

    return json.dumps(envelope(command, body, outputs), indent=2, sort_keys=True)


def _fail(ctx: click.Context, message: str, code: int, stage: str) -> NoReturn:
    """``error[STAGE]: MESSAGE`` on stderr (and with --json the error object on stdout), then exit."""
    if ctx.find_root().meta.get("bhvit.debug"):
        traceback.print_exc(file=sys.stderr)
    click.echo(f"error[{stage}]: {message}", err=True)
    command = ctx.find_root().meta.get("bhvit.json")
    if command and code != 1:  # exit 1 (a failed check) has already printed its report
        from .report import error_object

        click.echo(json.dumps(error_object(message, stage, code, command), sort_keys=True))
    ctx.exit(code)


class _Cli(click.Group):
    """A click group that turns library exceptions into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BhvitError as e:
            _fail(ctx, str(e), e.exit_code, e.stage)
        except Terminated:
            _fail(ctx, "terminated (SIGTERM); nothing was written", EXIT_TERMINATED, "terminated")
        except KeyboardInterrupt:
            _fail(ctx, "interrupted; nothing was written", EXIT_INTERRUPTED, "interrupted")
        except Exception as e:  # a missing optional package, else a bug in this tool
            top = (e.name or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
            if top in OPTIONAL_PACKAGES:
                _fail(
                    ctx,
                    f"this command needs the Python package '{top}', which is not installed "
                    f"(pip install {OPTIONAL_PACKAGES[top]})",
                    2,
                    "environment",
                )
            first = str(e).splitlines()[0] if str(e) else ""
            _fail(
                ctx,
                f"unexpected {type(e).__name__}: {first} "
                "(a bug in bhvit-export; rerun with --debug for the traceback and report it)",
                EXIT_BUG,
                "internal",
            )


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]}, epilog=ex.TOP)
@click.option("--debug", is_flag=True, help="Show the full traceback of any error.")
@click.version_option(__version__, "--version", prog_name="bhvit-export")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export BHViT checkpoints of the official training code to ONNX with packed-bit ops, compile them
    with TVM for x86-64, Arm Cortex-A and Jetson, and verify the result on the device."""
    ctx.meta["bhvit.debug"] = debug


@cli.command("to-onnx", epilog=ex.TO_ONNX)
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
@click.option("--no-validate", is_flag=True, help="Skip running the written graph in onnxruntime against PyTorch.")
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the report as JSON on stdout (progress goes to stderr).")
def to_onnx(ckpt: Path, out: Path, reference: bool, entry: str, config_json: Path | None, opset: int | None,
            no_validate: bool, as_json: bool) -> None:
    """Convert checkpoint CKPT (.pth of the official training code) to ONNX.

    The written graph is then run in onnxruntime on the golden inputs and compared with PyTorch
    (cosine, max |diff|, top-1). Exit 1 when it is outside the tolerance; the file stays.
    """
    from .errors import ExportValidationFailed
    from .export.convert import convert_checkpoint

    report = convert_checkpoint(
        ckpt,
        out,
        reference=reference,
        entry=entry,
        config_json=config_json,
        opset=opset,
        validate=not no_validate,
        progress=_say(as_json, sys.stdout),  # to-onnx's progress has always been on stdout without --json
    )
    if as_json:
        click.echo(_json_dump("to-onnx", report.to_json(), (out,)))
    else:
        for line in report.lines():
            click.echo(line)
    if report.validation is not None and not report.validation.passed:
        raise ExportValidationFailed(
            f"the exported graph disagrees with PyTorch beyond the tolerance ({'; '.join(report.validation.failures)}); "
            f"the file stays for inspection: {out}"
        )


@cli.command("inspect", epilog=ex.INSPECT)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the census as JSON on stdout (nothing else).")
@click.option("--ops", "show_ops", is_flag=True, help="Also show the schema of each bhvit op MODEL uses (inputs, attributes, cost).")
def inspect_cmd(model: Path, as_json: bool, show_ops: bool) -> None:
    """Op census, BOPs/FLOPs/OPs, parameters and size of MODEL (.onnx), beside the paper's Table 2."""
    from .census import format_op_schemas, format_report, inspect_file, op_schemas

    c = inspect_file(model)
    if as_json:
        click.echo(_json_dump("inspect", {**c.to_json(), **({"op_schemas": op_schemas(c)} if show_ops else {})}))
    else:
        click.echo(format_report(c) + (f"\n\n{format_op_schemas(c)}" if show_ops else ""))


def _say(as_json: bool, stream: Any = None):
    """Progress on stderr (stdout stays clean for --json): a spinner on a terminal, else ``... `` lines."""
    from .progress import Progress

    return Progress(None if as_json else stream)


@cli.command("compile", epilog=ex.COMPILE)
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    default="x86_64",
    show_default=True,
    help="x86_64 (this CPU unless --mcpu), aarch64 (cortex-a72 unless --mcpu), jetson-orin, a TVM tag "
    "(raspberry-pi/4b-aarch64, nvidia/jetson-orin-nano, ...), a TVM target string "
    "(\"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53\", \"cuda -arch=sm_87\") or a JSON target "
    "(inline or a .json file). `bhvit-export targets` lists them.",
)
@click.option("--mcpu", default=None, help="CPU model for x86_64/aarch64 (e.g. haswell, cortex-a76; x86_64: native = this CPU, the default).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write (or NAME.tar).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="The batch size compiled in.")
@click.option("--golden-inputs", type=click.Path(path_type=Path, dir_okay=False), help="Own golden inputs (.npy float32 [N,3,S,S]).")
@click.option("--golden-outputs", type=click.Path(path_type=Path, dir_okay=False), help="Their reference logits (.npy [N,classes]).")
@click.option("--no-native", is_flag=True, help="Do not add the native C++ runner and the TVM runtime libraries.")
@click.option("--allow-float", is_flag=True, help="Compile a graph without bhvit ops (the --reference graph) instead of refusing it.")
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the report as JSON on stdout (progress goes to stderr).")
def compile_cmd(model: Path, target: str, mcpu: str | None, out: Path, batch: int, golden_inputs: Path | None,
                golden_outputs: Path | None, no_native: bool, allow_float: bool, as_json: bool) -> None:
    """Compile MODEL (a fused .onnx from to-onnx) with TVM into a deploy bundle for a target."""
    from .compile import compile_model

    report = compile_model(
        model, out, target=target, mcpu=mcpu, batch=batch, golden_inputs=golden_inputs,
        golden_outputs=golden_outputs, native=not no_native, allow_float=allow_float, progress=_say(as_json),
    )
    click.echo(_json_dump("compile", report.to_json(), (out,)) if as_json else "\n".join(report.lines()))


class _Seconds(click.FloatRange):
    """A positive, finite number of seconds (click's FloatRange lets NaN through: it compares false)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return v


def _tolerance_options(f):
    f = click.option("--min-cosine", type=float, default=None, help="Pass criterion [bundle: 0.9995].")(f)
    f = click.option("--max-abs-over-std", type=float, default=None, help="Pass criterion: max |diff| / std(reference) [bundle: 0.05].")(f)
    f = click.option("--min-top1", type=float, default=None, help="Pass criterion: top-1 agreement fraction [bundle: 1.0].")(f)
    return f


@cli.command("verify", epilog=ex.VERIFY)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(0, MAX_RUNS), default=20, show_default=True, help="Timed runs (0: accuracy only).")
@click.option("--warmup", type=click.IntRange(0, MAX_RUNS), default=3, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="CPU threads of the TVM runtime (and of PyTorch).")
@click.option("--timeout", type=_Seconds(min=0, min_open=True, max=86400), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds an --rpc/--tracker peer may stay silent (connect, upload, each run) before verify gives up.")
@click.option("--rpc", default=None, metavar="HOST:PORT", help="Run on the device serving TVM RPC there (a board, or `bhvit-export emulate`).")
@click.option("--tracker", default=None, metavar="HOST:PORT", help="Get devices from this TVM RPC tracker (needs --key).")
@click.option("--key", default=None, help="Device key registered with the tracker.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="With --tracker: how many devices of the key to verify on.")
@click.option("--native", is_flag=True, help="Use the bundle's C++ runner (under qemu for a foreign arch) instead of Python TVM.")
@click.option("--profile", is_flag=True, help="Per-function latency of the compiled model (this machine's CPU).")
@click.option("--no-torch", is_flag=True, help="Do not time the PyTorch reference even if torch is installed.")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None, help="ImageFolder of labeled images: top-1 of the compiled model (and of --reference).")
@click.option("--limit", "images_limit", type=click.IntRange(min=1), default=None, help="With --images: N images, taken round-robin over the classes.")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --images: class-index file (JSON or TXT) mapping class folders to the model's classes [1000 classes: ImageNet synset order; else sorted folders].")
@click.option("--reference", "reference", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --images: the reference model (.onnx via onnxruntime, or the checkpoint via PyTorch).")
@_tolerance_options
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the report as JSON on stdout.")
def verify_cmd(bundle: Path, runs: int, warmup: int, threads: int | None, timeout: float, rpc: str | None, tracker: str | None,
               key: str | None, devices: int, native: bool, profile: bool, no_torch: bool, images: Path | None,
               images_limit: int | None, labels: Path | None, reference: Path | None, min_cosine: float | None,
               max_abs_over_std: float | None, min_top1: float | None, as_json: bool) -> None:
    """Check BUNDLE's files, run its golden inputs and compare with the reference; time it.

    Exit 0 when within the tolerances, 1 when not, 2 for a bad or altered bundle.
    """
    from .errors import BundleError, VerificationFailed
    from .verify.verify import VerifyOptions, verify_bundle

    if sum(bool(v) for v in (rpc, tracker, native)) > 1:
        raise BundleError("choose one of --rpc, --tracker and --native")
    for flag, value in (("--reference", reference), ("--limit", images_limit), ("--labels", labels)):
        if value is not None and images is None:
            raise BundleError(f"{flag} applies to --images DIR (top-1 on labeled images); give --images or drop {flag}")
    tol = {k: v for k, v in (("min_cosine", min_cosine), ("max_abs_over_std", max_abs_over_std),
                             ("min_top1_agreement", min_top1)) if v is not None}
    opts = VerifyOptions(runs=runs, warmup=warmup, threads=threads, rpc=rpc, tracker=tracker, key=key,
                         devices=devices, native=native, tolerances=tol, torch_latency=not no_torch, profile=profile,
                         images=images, images_limit=images_limit, reference=reference, labels=labels, timeout=timeout)
    report = verify_bundle(bundle, opts, progress=_say(as_json))
    click.echo(_json_dump("verify", report.to_json()) if as_json else "\n".join(report.lines()))
    if not report.passed:
        raise VerificationFailed("the compiled model's outputs are outside the tolerances")


@cli.command("verify-layers")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--intermediates", type=click.Path(path_type=Path, file_okay=False), default=None, help="Official fixture folder with intermediates/ (reference activations, first image).")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Or: the checkpoint; our PyTorch model gives the reference activations on the golden images.")
@click.option("--config", "config_json", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --checkpoint: the official config.json (GSB models need it).")
@click.option("--engine", type=click.Choice(["onnxruntime", "tvm"]), default="onnxruntime", show_default=True, help="Run the blocks in onnxruntime or compiled by TVM for this CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_layers_cmd(model: Path, intermediates: Path | None, checkpoint: Path | None, config_json: Path | None,
                      engine: str, as_json: bool) -> None:
    """Check MODEL block by block, each fed the reference's input to that block (teacher-forced).

    Exit 0 when every block is within the tolerance, 1 when not (the first failing block is named).
    """
    from .errors import VerificationFailed
    from .verify.layers import verify_layers

    report = verify_layers(model, intermediates=intermediates, checkpoint=checkpoint, config_json=config_json,
                           engine=engine, progress=_say(as_json))
    click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if as_json else "\n".join(report.lines()))
    if not report.passed:
        raise VerificationFailed(f"block {report.first_failure} is outside the tolerance")


@cli.command("emulate", epilog=ex.EMULATE)
@click.option("--arch", type=click.Choice(emulated_arches()), default=emulated_arches()[0], show_default=True, help="The device's architecture (qemu-user emulates it).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True, help="TCP port of the RPC server (verify --rpc HOST:PORT).")
def emulate_cmd(arch: str, host: str, port: int) -> None:
    """Serve TVM RPC as an emulated ARM device (qemu-user) until stopped (Ctrl-C).

    Runs our small C++ RPC server against the aarch64 TVM runtime under qemu-aarch64, so
    `verify --rpc HOST:PORT` uploads and runs an aarch64 bundle here. Latency under qemu is not the
    device's latency: this proves the library runs and is correct. Needs g++-aarch64-linux-gnu and
    qemu-user (scripts/install-system-deps.sh).
    """
    from bhvit_export.targets.emulate import serve

    serve(arch, host, port, on_ready=lambda h, p: click.echo(f"emulated {arch} device serving TVM RPC on {h}:{p} (Ctrl-C stops it)", err=True))


@cli.command("bench", epilog=ex.BENCH)
@click.option("--model", "models", multiple=True, type=click.Choice(["tiny", "small"]), help="Model size(s) [default: tiny and small].")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), help="Batch size(s) [default: 1 and 8].")
@click.option("--threads", "threads", multiple=True, type=click.IntRange(min=1), help="Thread count(s) [default: 1 and 2].")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True, help="Interleaved timed rounds per configuration.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path, dir_okay=False), help="Your own checkpoint(s) instead of the paper's Tiny/Small.")
@click.option("--system", "include", multiple=True,
              type=click.Choice(["bhvit", "onnxruntime_fp32", "tvm_fp32", "pytorch", "openvino_fp32", "torch_compile", "onnxruntime_int8"]),
              help="Systems to time [default: all; a system whose package is missing is a skipped row].")
@click.option("--kernels", is_flag=True, help="Also the kernel table: binary GEMM shapes vs the popcount roofline and onnxruntime fp32.")
@click.option("--breakdown", is_flag=True, help="Also the per-function time of our compiled model (first configuration).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write a PNG of the results here.")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False), default=None, help="Where compiled models are cached [~/.cache/bhvit-export/bench].")
@click.option("--arm", is_flag=True, help="Estimate Cortex-A55/A72/A76/A78 latency (qemu block counts x llvm-mca), ours vs TVM fp32 and onnxruntime aarch64, checked on x86; with --kernels: the kernels' inner loops vs the NEON limit.")
@click.option("--cpu", "cpus", multiple=True, type=click.Choice(["cortex-a55", "cortex-a72", "cortex-a76", "cortex-a78"]),
              help="With --arm: estimate only these CPU models [default: all four].")
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the results as JSON on stdout.")
def bench_cmd(models, batches, threads, rounds, checkpoints, include, kernels, breakdown, plot, cache, arm, cpus, as_json) -> None:
    """Time our compiled model against what you would deploy instead, interleaved, on this machine.

    PyTorch eager, torch.compile (inductor), onnxruntime fp32 and int8 (dynamic quantization),
    OpenVINO fp32 (LATENCY hint), TVM fp32 and bhvit-export, in one interleaved run per model, batch
    and thread count.
    """
    if arm:
        from bhvit_export.benchmarks.arm_cli import bench_arm

        click.echo(bench_arm(models, include, kernels, cache, as_json, lambda m: click.echo(f"... {m}", err=True), cpus=cpus))
        return
    from .errors import BhvitError
    from .output_target import check_output

    if plot is not None:  # before minutes of timing, not after
        check_output(plot, folder=False, error=BhvitError, option="--plot")
    from bhvit_export.benchmarks.report import run_bench

    report = run_bench(
        models=tuple(str(c) for c in checkpoints) + tuple(models) or ("tiny", "small"),
        batches=batches or (1, 8), threads=threads or (1, 2),
        rounds=rounds, include=include or None, kernels=kernels, breakdown=breakdown, plot=plot, cache=cache,
        say=_say(as_json) or (lambda _m: None),
    )
    click.echo(_json_dump("bench", report.to_json()) if as_json else report.text())


@cli.command("targets", epilog=ex.TARGETS)
@click.option("--json", "as_json", is_flag=True, callback=_json_mode, help="Print the list as JSON on stdout.")
def targets_cmd(as_json: bool) -> None:
    """List what compile --target and --mcpu accept: our names, the TVM tags that work, the CPUs."""
    from bhvit_export.targets.catalog import catalog

    c = catalog()
    click.echo(_json_dump("targets", c.to_json()) if as_json else "\n".join(c.lines()))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``bhvit-export``) and ``python -m bhvit_export``.

    SIGTERM (``kill``, a CI timeout, systemd) is turned into :class:`Terminated` here, not in the
    click group, so that tests invoking ``cli`` in-process keep their own signal handling.
    """
    from . import background

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="bhvit-export")
    except SystemExit as e:
        if background.abandoned():  # a TVM call still runs in a worker: do not wait for it, or crash in it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
