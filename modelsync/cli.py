"""The command line: click wiring only. Each command parses, calls one core function, renders.

``main()`` is the one place that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from modelsync import __version__, output
from modelsync.errors import ExitCode, ManifestError, ModelsyncError
from modelsync.redact import redact

F = TypeVar("F", bound=Callable[..., Any])

_VERBOSE = {"flag": 0}


@dataclass(frozen=True)
class Globals:
    """The global options, passed to every command through click's context."""

    verbosity: int
    color: bool
    log_format: str


def _globals() -> Globals:
    obj = click.get_current_context().find_root().obj
    assert isinstance(obj, Globals)
    return obj


def _echo_err(text: str) -> None:
    click.echo(redact(text), err=True)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    __version__, "--version", prog_name="modelsync", message="%(prog)s %(version)s"
)
@click.option("-v", "--verbose", count=True, help="More output (repeat for debug logs).")
@click.option("-q", "--quiet", count=True, help="Less output: errors and the product only.")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour in text output; NO_COLOR in the environment means never.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Logs on stderr as text lines or as one JSON object per line.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, color: str, log_format: str) -> None:
    """Keep a ModelsLab model catalogue declared in a YAML manifest.

    \b
    Examples:
      modelsync validate manifests/prod.yaml
      modelsync plan manifests/prod.yaml
      modelsync apply manifests/prod.yaml
      modelsync apply --sandbox manifests/example.yaml
    """
    verbosity = verbose - quiet
    _VERBOSE["flag"] = verbosity
    use_color = output.color_enabled(color, sys.stdout)
    ctx.obj = Globals(verbosity=verbosity, color=use_color, log_format=log_format)
    output.setup_logging(verbosity, log_format, color=output.color_enabled(color, sys.stderr))


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=True))
def validate(manifests: Sequence[str]) -> int:
    """Check manifests and print every problem, with file:line:column and the fix.

    \b
    Exit 0 when every manifest is valid, 3 when any is not.
    Example:
      modelsync validate manifests/*.yaml
    """
    from modelsync.manifest import load_manifest

    g = _globals()
    worst = ExitCode.OK
    for path in manifests:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            output.print_diagnostics(exc.diagnostics)
            _echo_err(f"{path}: invalid ({output.plural(len(exc.diagnostics), 'problem')})")
            worst = ExitCode.MANIFEST
            continue
        for warning in manifest.warnings:
            _echo_err(str(warning))
        if g.verbosity >= 0:
            click.echo(f"{path}: valid ({output.plural(len(manifest.models), 'model')})")
    return int(worst)


@cli.command()
def schema() -> int:
    """Print the manifest JSON Schema (draft 2020-12), as shipped in the package.

    \b
    Example:
      modelsync schema > manifest.schema.json
    """
    from modelsync.manifest import schema_text

    click.echo(schema_text(), nl=False)
    return 0


def _run(args: Sequence[str] | None) -> int:
    try:
        result = cli.main(args=args, prog_name="modelsync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        _echo_err("Aborted.")
        return int(ExitCode.SIGINT)
    except click.ClickException as exc:
        # Usage errors (unknown option, bad value...) are 64, never 2: 2 means "changes".
        exc.show()
        return int(ExitCode.USAGE)
    return int(result) if isinstance(result, int) else 0


def main(args: Sequence[str] | None = None) -> int:
    """Run the command line; the one place that maps exceptions to exit codes."""
    try:
        return _run(args)
    except ManifestError as exc:
        output.print_diagnostics(exc.diagnostics)
        return int(exc.exit_code)
    except ModelsyncError as exc:
        _echo_err(f"Error: {exc}")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        _echo_err("Interrupted.")
        return int(ExitCode.SIGINT)
    except Exception as exc:  # the last resort: a bug
        if _VERBOSE["flag"] >= 1:
            _echo_err("".join(traceback.format_exception(exc)).rstrip())
        _echo_err(
            f"Error: internal error ({type(exc).__name__}: {exc}). This is a bug in modelsync "
            f"{__version__}: please report it with the output of the same command run with -v."
        )
        return int(ExitCode.INTERNAL)
