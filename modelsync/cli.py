"""The command line: click wiring only. Each command parses, calls one core function, renders.

``main()`` is the one place that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import itertools
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from modelsync import __version__, output
from modelsync.errors import ExitCode, ManifestError, ModelsyncError

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
    output.stderr(text)


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
            problems = output.plural(len(exc.diagnostics), "problem")
            output.stderr(f"{path}: invalid ({problems})", logging.ERROR)
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
    except SystemExit as exc:
        # Shell completion (_MODELSYNC_COMPLETE) ends with sys.exit(); main() returns codes.
        return exc.code if isinstance(exc.code, int) else int(ExitCode.FAILED)
    except click.exceptions.Abort:
        _echo_err("Aborted.")
        return int(ExitCode.SIGINT)
    except click.ClickException as exc:
        # Usage errors (unknown option, bad value...) are 64, never 2: 2 means "changes".
        if output.json_logs():
            _echo_err(f"Error: {exc.format_message()}")
        else:
            exc.show()
        return int(ExitCode.USAGE)
    return int(result) if isinstance(result, int) else 0


def _follows(argv: Sequence[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def main(args: Sequence[str] | None = None) -> int:
    """Run the command line; the one place that maps exceptions to exit codes."""
    argv = list(sys.argv[1:] if args is None else args)
    # Known before click parses anything, so that even a usage error is a JSON record.
    json_logs = "--log-format=json" in argv or _follows(argv, "--log-format", "json")
    output.setup_logging(0, "json" if json_logs else "text", color=False)
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


# --------------------------------------------------------------------------- plan / apply


def _target_options(func: F) -> F:
    options = [
        click.option(
            "--state",
            "state_path",
            metavar="PATH",
            help="State file (default: .modelsync/<manifest stem>.state.json beside the "
            "manifest; or MODELSYNC_STATE).",
        ),
        click.option(
            "--endpoint",
            metavar="URL",
            help="load_model URL (default: MODELSYNC_ENDPOINT, then target.endpoint, then "
            "the public API).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection_options(func: F) -> F:
    options = [
        click.option(
            "--only", multiple=True, metavar="ID", help="Only these model ids (glob; repeatable)."
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="ID",
            help="Skip these model ids (glob; repeatable).",
        ),
        click.option(
            "--selector",
            "-l",
            multiple=True,
            metavar="KEY=VALUE",
            help="Only models whose labels match key=value or key!=value (repeatable).",
        ),
        click.option(
            "--output",
            "-o",
            "output_format",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="text for people, json for pipelines (on stdout).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection(only: Sequence[str], exclude: Sequence[str], selector: Sequence[str]) -> Any:
    from modelsync.plan import Selection, parse_selectors

    return Selection(tuple(only), tuple(exclude), parse_selectors(selector))


def _warn_unmatched(selection: Any, target: Any) -> None:
    ids = [m.model_id for m in target.manifest.models]
    for pattern in selection.unmatched_patterns(ids):
        _echo_err(f"warning: --only/--exclude pattern {pattern!r} matches no model id")


def _print_plan(plan: Any, target: Any, output_format: str) -> None:
    g = _globals()
    if output_format == "json":
        document = output.plan_document(
            plan, manifest=target.manifest_path, state=str(target.state_path)
        )
        click.echo(output.dump_json(document))
    else:
        click.echo(
            output.render_plan(
                plan,
                manifest=target.manifest_path,
                state=str(target.state_path),
                verbose=g.verbosity >= 1,
                color=g.color,
            ),
            # click strips escapes on a non-terminal unless told: --color always must survive
            # a pipe (`| less -R`), and g.color already holds the --color/NO_COLOR decision.
            color=g.color,
        )


@cli.command()
@click.argument("manifest", type=click.Path())
@_target_options
@_selection_options
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when there are changes to apply (0: none; errors keep their codes).",
)
def plan(
    manifest: str,
    state_path: str | None,
    endpoint: str | None,
    only: Sequence[str],
    exclude: Sequence[str],
    selector: Sequence[str],
    output_format: str,
    detailed_exitcode: bool,
) -> int:
    """Show what apply would do. Never writes the state, never calls the API.

    \b
    Examples:
      modelsync plan manifests/prod.yaml
      modelsync plan manifests/prod.yaml --only 'sdxl-*' --selector team=portraits
      modelsync plan manifests/prod.yaml --output json --detailed-exitcode
    """
    from modelsync import workflow

    selection = _selection(only, exclude, selector)
    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    _report_warnings(target)
    _warn_unmatched(selection, target)
    the_plan, _state = workflow.compute_plan(target, selection)
    _print_plan(the_plan, target, output_format)
    if detailed_exitcode and the_plan.has_changes:
        return int(ExitCode.CHANGES)
    return int(ExitCode.OK)


def _report_warnings(target: Any) -> None:
    for warning in target.manifest.warnings:
        _echo_err(str(warning))


@cli.command()
@click.argument("manifest", type=click.Path())
@_target_options
@_selection_options
@click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests in flight at most (lowered automatically on 429).",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Attempts per model in this run (failed models are retried next run).",
)
@click.option(
    "--max-retry-after",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest Retry-After wait honoured; a longer one fails the model for this run.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop starting submissions after this long; unstarted models are skipped (exit 1).",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another run's state lock (0: fail at once, exit 4).",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Read the API key from this file instead of the environment variable.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Also write the JSON report to FILE.",
)
@click.option("--dry-run", is_flag=True, help="Show the plan with these flags; send nothing.")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Run against a local in-process sandbox API, with its own state file; no key needed.",
)
@click.option(
    "--forget-orphans",
    is_flag=True,
    help="Drop models that are in the state but not in the manifest from the state.",
)
def apply(
    manifest: str,
    state_path: str | None,
    endpoint: str | None,
    only: Sequence[str],
    exclude: Sequence[str],
    selector: Sequence[str],
    output_format: str,
    parallelism: int,
    max_attempts: int,
    max_retry_after: float,
    deadline: float | None,
    lock_timeout: float,
    api_key_file: str | None,
    report_path: str | None,
    dry_run: bool,
    sandbox: bool,
    forget_orphans: bool,
) -> int:
    """Submit every create, update and retry to load_model, recording each result.

    The whole manifest is validated first: nothing is sent if any entry is invalid.

    \b
    Examples:
      MODELSYNC_API_KEY=... modelsync apply manifests/prod.yaml
      modelsync apply --sandbox manifests/example.yaml
      modelsync apply manifests/prod.yaml --exclude 'experimental-*' --report report.json
    """
    import contextlib
    import os

    from modelsync import workflow
    from modelsync.apply import ApplyOptions, StopFlag

    if sandbox and (endpoint or api_key_file):
        raise_usage("--sandbox runs against a local sandbox: drop --endpoint/--api-key-file")
    selection = _selection(only, exclude, selector)
    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    _report_warnings(target)
    _warn_unmatched(selection, target)
    with contextlib.ExitStack() as stack:
        if sandbox:
            target = stack.enter_context(workflow.sandbox_target(target, load_seconds=5.0))
            api_key = workflow.SANDBOX_KEY
            if _globals().verbosity >= 0:
                _echo_err(f"Sandbox: {target.url} (state {target.state_path})")
        if dry_run:
            the_plan, _state = workflow.compute_plan(target, selection)
            _print_plan(the_plan, target, output_format)
            return int(ExitCode.OK)
        if not sandbox:
            api_key = workflow.read_api_key(target.manifest, api_key_file, os.environ)
        stop = StopFlag()
        stack.enter_context(_signals_stop(stop))
        progress = stack.enter_context(output.Progress(enabled=output_format == "text"))
        _plan, report = workflow.apply_plan(
            target,
            selection,
            api_key=api_key,
            options=ApplyOptions(
                parallelism=parallelism, deadline_s=deadline, forget_orphans=forget_orphans
            ),
            client_options=workflow.ClientOptions(
                max_attempts=max_attempts, max_retry_after=max_retry_after
            ),
            stop=stop,
            lock_timeout=lock_timeout,
            command=_command_line(),
            on_plan=lambda p: _on_plan(p, target, output_format, progress),
            on_result=progress.result,
        )
    document = report.to_json()
    if report_path:
        output.write_report(report_path, document)
    if output_format == "json":
        click.echo(output.dump_json(document))
    else:
        use_color = _globals().color
        click.echo(output.render_summary(report, color=use_color), color=use_color)
    if report.exit_code == ExitCode.AUTH:
        if sandbox:
            source = "the sandbox's own key"
        elif api_key_file:
            source = f"the file {api_key_file} (--api-key-file)"
        else:
            source = f"the environment variable {target.manifest.api_key_env}"
        _echo_err(
            f"Error: {report.stop_reason}; nothing more was sent. The API key (not shown) "
            f"comes from {source}: check that it is valid and that its account has credits, "
            "then run apply again."
        )
    return int(report.exit_code)


def _on_plan(plan_obj: Any, target: Any, output_format: str, progress: Any) -> None:
    if output_format == "text":
        _print_plan(plan_obj, target, "text")
    progress.start(len(plan_obj.to_submit))


def raise_usage(message: str) -> None:
    """Stop with a usage error (exit 64)."""
    from modelsync.errors import UsageError

    raise UsageError(message)


def _command_line() -> str:
    import shlex

    return "modelsync " + " ".join(shlex.quote(a) for a in sys.argv[1:])


class _signals_stop:
    """SIGINT/SIGTERM: start nothing new, let in-flight requests finish, exit 130/143."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            code = ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM
            name = signal.Signals(signum).name
            self.stop.set(f"interrupted by {name}", code)
            _echo_err(f"{name}: finishing the requests in flight, starting no new ones...")
            # A second signal ends the process at once (the journal keeps what was recorded).
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))

        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, handler)

    def __exit__(self, *exc_info: object) -> None:
        import signal

        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


# --------------------------------------------------------------------------- state


@cli.group()
def state() -> None:
    """Inspect or edit the state: what modelsync has submitted.

    \b
    Examples:
      modelsync state list manifests/prod.yaml
      modelsync state show majicmix-realistic manifests/prod.yaml
      modelsync state rm old-model manifests/prod.yaml
      modelsync state adopt hand-loaded-model manifests/prod.yaml
    """


def _state_options(func: F) -> F:
    func = click.option(
        "--lock-timeout",
        type=click.FloatRange(0),
        default=0.0,
        show_default=True,
        metavar="SECONDS",
        help="Wait this long for another run's state lock.",
    )(func)
    return _target_options(func)


@state.command("list")
@click.argument("manifest", type=click.Path())
@_target_options
@click.option(
    "--output",
    "-o",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for pipelines.",
)
def state_list(
    manifest: str, state_path: str | None, endpoint: str | None, output_format: str
) -> int:
    """List the models in the state, with their status. Read-only.

    \b
    Example:
      modelsync state list manifests/prod.yaml
    """
    from modelsync import workflow
    from modelsync.state import read_state

    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    current = read_state(target.state_path, target.endpoint)
    if output_format == "json":
        click.echo(output.dump_json(workflow.describe_state(current)))
        return 0
    click.echo(output.render_state_list(current))
    return 0


@state.command("show")
@click.argument("model_id")
@click.argument("manifest", type=click.Path())
@_target_options
def state_show(model_id: str, manifest: str, state_path: str | None, endpoint: str | None) -> int:
    """Show one model's record (JSON), as the state holds it. Read-only.

    \b
    Example:
      modelsync state show majicmix-realistic manifests/prod.yaml
    """
    from modelsync import workflow
    from modelsync.state import read_state

    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    current = read_state(target.state_path, target.endpoint)
    record = current.models.get(model_id)
    if record is None:
        raise_usage(f"{model_id!r} is not in the state {target.state_path}")
        return 64
    click.echo(output.dump_json({model_id: record.to_json()}))
    return 0


@state.command("rm")
@click.argument("model_ids", nargs=-1, required=True, metavar="ID...")
@click.argument("manifest", type=click.Path())
@_state_options
def state_rm(
    model_ids: Sequence[str],
    manifest: str,
    state_path: str | None,
    endpoint: str | None,
    lock_timeout: float,
) -> int:
    """Drop models from the state. Nothing is deleted on the account.

    The next apply creates them again if they are still in the manifest.

    \b
    Example:
      modelsync state rm old-model other-model manifests/prod.yaml
    """
    from modelsync import workflow

    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    removed = workflow.state_rm(target, model_ids, lock_timeout=lock_timeout)
    click.echo(f"Removed from the state: {', '.join(removed)}")
    return 0


@state.command("adopt")
@click.argument("model_ids", nargs=-1, required=True, metavar="ID...")
@click.argument("manifest", type=click.Path())
@_state_options
def state_adopt(
    model_ids: Sequence[str],
    manifest: str,
    state_path: str | None,
    endpoint: str | None,
    lock_timeout: float,
) -> int:
    """Record models that already exist on the account as submitted, sending nothing.

    For models loaded by hand before modelsync: add them to the manifest as they are
    on the account, then adopt them so apply does not load them again.

    \b
    Example:
      modelsync state adopt majicmix-realistic manifests/prod.yaml
    """
    from modelsync import workflow

    target = workflow.resolve_target(manifest, endpoint=endpoint, state=state_path)
    adopted = workflow.state_adopt(target, model_ids, lock_timeout=lock_timeout)
    click.echo(f"Adopted into the state: {', '.join(adopted)}")
    return 0


# --------------------------------------------------------------------------- sandbox


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port (0: a free one).",
)
@click.option(
    "--api-key",
    default="sandbox",
    show_default=True,
    help="The one key the sandbox accepts (a test value, not a real key).",
)
@click.option(
    "--latency",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    metavar="MS",
    help="Added to every load_model answer.",
)
@click.option(
    "--load-seconds",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="How long a model stays 'loading' before 'model_ready'.",
)
@click.option(
    "--max-queued",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="More requests in flight than this get 429 with retry_after.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    metavar="SECONDS",
    help="retry_after in 429 answers.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    metavar="P",
    help="Probability of a 5xx answer.",
)
@click.option(
    "--reset-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    metavar="P",
    help="Probability of dropping the connection after reading the request.",
)
@click.option(
    "--garbage-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    metavar="P",
    help="Probability of a 200 with an unreadable body.",
)
@click.option("--seed", type=int, default=None, help="Seed for the fault draws (repeatable runs).")
@click.option(
    "--request-log",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Write a JSON line per request received (key masked).",
)
def sandbox(
    host: str,
    port: int,
    api_key: str,
    latency: float,
    load_seconds: float,
    max_queued: int,
    retry_after: int,
    fail_rate: float,
    reset_rate: float,
    garbage_rate: float,
    seed: int | None,
    request_log: str | None,
) -> int:
    """Run a local API sandbox that behaves like the load_model API family.

    No account or credits needed. Point apply at it with --endpoint, or use
    'apply --sandbox', which starts one in-process.

    \b
    Example:
      modelsync sandbox --port 8765 --latency 50 --fail-rate 0.1 &
      MODELSYNC_API_KEY=sandbox modelsync apply manifests/example.yaml \\
        --endpoint http://127.0.0.1:8765/api/v3/load_model --state /tmp/sandbox.state.json
    """
    from pathlib import Path

    from modelsync.sandbox import SandboxConfig, serve_forever

    config = SandboxConfig(
        host=host,
        port=port,
        api_key=api_key,
        latency_ms=latency,
        load_seconds=load_seconds,
        max_queued=max_queued,
        retry_after=retry_after,
        fail_rate=fail_rate,
        reset_rate=reset_rate,
        garbage_rate=garbage_rate,
        seed=seed,
        request_log=Path(request_log) if request_log else None,
    )

    def ready(running: Any) -> None:
        _echo_err(f"Sandbox listening on {running.url}")
        _echo_err(f"load_model: {running.load_model_url}")
        sys.stderr.flush()

    serve_forever(config, ready=ready)
    return 0
