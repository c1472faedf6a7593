"""The ``bhvit-export`` command line: parse options, call one library function, print its report.

Kept thin on purpose: every behaviour worth testing lives in the library (``checkpoint``,
``export.convert``, ...), which never imports click. Heavy modules (torch, onnx, tvm) are imported
inside the commands, so ``--help`` and ``--version`` answer at once.

Errors: a :class:`~bhvit_export.errors.BhvitError` becomes one line ``error: <message>`` on stderr
and its exit code (2 for bad input, 1 for a failed verification); click usage errors exit 2;
Ctrl-C exits 130 (outputs are written atomically, so nothing partial is left); anything else is a
bug in this tool: one line, exit 3, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .checkpoint import ENTRIES  # light: torch is imported inside load_checkpoint
from .errors import BhvitError

EXIT_INTERRUPTED = 130
EXIT_BUG = 3


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
        except KeyboardInterrupt:
            _fail(ctx, "error: interrupted; nothing was written", EXIT_INTERRUPTED)
        except Exception as e:  # a bug in this tool, not in the user's input
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


# --- Later commands (compile, verify, bench) go below, one per stage, each a thin
# --- wrapper around one library function, following to-onnx: @cli.command("name"), lazy imports.


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``bhvit-export``) and ``python -m bhvit_export``."""
    cli.main(args=argv, prog_name="bhvit-export")


if __name__ == "__main__":
    main()
