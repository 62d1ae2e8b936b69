"""The one place that turns exceptions into messages and exit codes (DESIGN §5).

Core code raises :class:`~modelsync.errors.ModelsyncError` subclasses; click raises its
usage errors; anything else is a bug: one line and exit 70, the traceback with ``-v``.
No command ever prints a Python traceback for a user error.
"""

from __future__ import annotations

import itertools
import sys
import traceback
from collections.abc import Callable, Sequence

import click

from modelsync import __version__, output
from modelsync.errors import ExitCode, ManifestError, ModelsyncError


def _click(group: click.Group, args: Sequence[str] | None) -> int:
    try:
        result = group.main(args=args, prog_name="modelsync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except SystemExit as exc:
        # Shell completion (_MODELSYNC_COMPLETE) ends with sys.exit(); main() returns codes.
        if exc.code is None:
            return int(ExitCode.OK)
        return exc.code if isinstance(exc.code, int) else int(ExitCode.FAILED)
    except click.exceptions.Abort:
        output.stderr("Aborted.")
        return int(ExitCode.SIGINT)
    except click.ClickException as exc:
        # Usage errors (unknown option, bad value...) are 64, never 2: 2 means "changes".
        if output.json_logs():
            output.stderr(f"Error: {exc.format_message()}")
        else:
            exc.show()
        return int(ExitCode.USAGE)
    return int(result) if isinstance(result, int) else 0


def _follows(argv: Sequence[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def run(group: click.Group, args: Sequence[str] | None, *, verbosity: Callable[[], int]) -> int:
    """Run the command line ``group`` on ``args``; return the process's exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    # Known before click parses anything, so that even a usage error is a JSON record.
    json_logs = "--log-format=json" in argv or _follows(argv, "--log-format", "json")
    output.setup_logging(0, "json" if json_logs else "text", color=False)
    try:
        return _click(group, args)
    except ManifestError as exc:
        output.print_diagnostics(exc.diagnostics)
        return int(exc.exit_code)
    except ModelsyncError as exc:
        output.stderr(f"Error: {exc}")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        output.stderr("Interrupted.")
        return int(ExitCode.SIGINT)
    except Exception as exc:  # the last resort: a bug
        if verbosity() >= 1:
            output.stderr("".join(traceback.format_exception(exc)).rstrip())
        output.stderr(
            f"Error: internal error ({type(exc).__name__}: {exc}). This is a bug in modelsync "
            f"{__version__}: please report it with the output of the same command run with -v."
        )
        return int(ExitCode.INTERNAL)
