"""The one place that turns exceptions into messages and exit codes (DESIGN §5).

Core code raises :class:`~modelsync.errors.ModelsyncError` subclasses; click raises its
usage errors; anything else is a bug: one line and exit 70, the traceback with ``-v``.
No command ever prints a Python traceback for a user error.
"""

from __future__ import annotations

import itertools
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence

import click

from modelsync import __version__, output
from modelsync.errors import ExitCode, ManifestError, ModelsyncError


def _option_names(command: click.Command) -> dict[str, bool]:
    """Every spelling of ``command``'s options, and whether it takes a value."""
    names: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for spelling in (*param.opts, *param.secondary_opts):
                names[spelling] = not (param.is_flag or param.count)
    return names


def _is_global(token: str, options: dict[str, bool]) -> bool:
    """``-v``, ``--color=never``, ``-vv``: a token that is (only) global options."""
    if token.split("=", 1)[0] in options:
        return True
    letters = token[1:]
    short = {o[1] for o, takes_value in options.items() if len(o) == 2 and not takes_value}
    return token[:1] == "-" and token[:2] != "--" and bool(letters) and set(letters) <= short


def _globals_after(
    argv: Sequence[str], start: int, command: click.Command, group: click.Group
) -> list[int]:
    """The indexes of the global options (and their values) in ``argv`` from ``start``."""
    options, own = _option_names(group), _option_names(command)
    moved: list[int] = []
    i = start
    while i < len(argv) and argv[i] != "--":
        token = argv[i]
        if token in own:  # the command's own option; the value it takes is never an option
            i += 2 if own[token] else 1
            continue
        if _is_global(token, options):
            moved.append(i)
            if options.get(token):  # "--color never": its value goes with it
                moved.append(i + 1)
                i += 1
        i += 1
    return [m for m in moved if m < len(argv)]


def _misplaced_global(group: click.Group, exc: click.NoSuchOption, argv: list[str]) -> str | None:
    """For a global option placed after the command: the message with the right order.

    Built from the actual ``argv``: every global option after the command (with its
    value) moves before it. None when the unknown option is not one of the group's.
    """
    ctx, name = exc.ctx, exc.option_name
    if ctx is None or ctx.parent is None or name not in _option_names(group):
        return None
    fix = f"{name} is a global option: put it before the command: modelsync"
    if name == "--version":  # it prints the version and ends: the command is not needed
        return f"{fix} {name}"
    first_word = ctx.command_path.split()[1]  # "modelsync state list" -> state
    start = argv.index(first_word) if first_word in argv else len(argv)
    moved = _globals_after(argv, start + 1, ctx.command, group)
    if not moved:
        return None
    rest = [a for i, a in enumerate(argv) if i >= start and i not in moved]
    return f"{fix} {shlex.join([*argv[:start], *(argv[i] for i in moved), *rest])}"


def _click(group: click.Group, args: Sequence[str] | None, argv: list[str]) -> int:
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
    except click.NoSuchOption as exc:
        hint = _misplaced_global(group, exc, argv)
        if hint is None:
            return _usage_error(exc)
        output.stderr(f"Error: {hint}")
        return int(ExitCode.USAGE)
    except click.ClickException as exc:
        return _usage_error(exc)
    return int(result) if isinstance(result, int) else 0


def _usage_error(exc: click.ClickException) -> int:
    # Usage errors (unknown option, bad value...) are 64, never 2: 2 means "changes".
    if output.json_logs():
        output.stderr(f"Error: {exc.format_message()}")
    else:
        exc.show()
    return int(ExitCode.USAGE)


def _follows(argv: Sequence[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def run(group: click.Group, args: Sequence[str] | None, *, verbosity: Callable[[], int]) -> int:
    """Run the command line ``group`` on ``args``; return the process's exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    # Known before click parses anything, so that even a usage error is a JSON record.
    json_logs = "--log-format=json" in argv or _follows(argv, "--log-format", "json")
    output.setup_logging(0, "json" if json_logs else "text", color=False)
    try:
        return _click(group, args, argv)
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
