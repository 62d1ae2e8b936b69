"""The command line: click wiring only. Each command turns options into Settings, calls one
function of :mod:`modelsync.commands`, and renders what comes back.

``main()`` is the one place that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from modelsync import __version__, defaults, output
from modelsync.errors import ExitCode, UsageError
from modelsync.formats import findings, github

F = TypeVar("F", bound=Callable[..., Any])
# An option, or several, as one decorator (annotated: cli_state imports them in a cycle).
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

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


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, in the order given."""

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _opt(
    name: str, kind: Any, default: Any, help_text: str, param_decls: Sequence[str] = (), **kw: Any
) -> Callable[[F], F]:
    """One option with its type, default (shown unless None) and help, on one line."""
    kw.setdefault("show_default", default is not None)
    option: Callable[[F], F] = click.option(
        name, *param_decls, type=kind, default=default, help=help_text, **kw
    )
    return option


def _seconds(
    name: str, default: float | None, help_text: str, positive: bool = False
) -> Callable[[F], F]:
    kind = click.FloatRange(0, min_open=positive)
    return _opt(name, kind, default, help_text, metavar="SECONDS")


def _rate(name: str, help_text: str) -> Callable[[F], F]:
    return _opt(name, click.FloatRange(0, 1), 0.0, help_text, metavar="P")


def _flag(name: str, help_text: str) -> Callable[[F], F]:
    option: Callable[[F], F] = click.option(name, is_flag=True, help=help_text)
    return option


_HELP: dict[str, str] = {
    "parallelism": "Requests in flight at most (lowered automatically on 429).",
    "max_attempts": "Attempts per model in this run (failed models are retried next run).",
    "max_retry_after": "Longest Retry-After wait honoured; a longer one fails the model for "
    "this run.",
    "deadline": "End the run after this long: unstarted models are skipped, requests in "
    "flight abandoned and recorded pending (exit 1).",
    "grace": "On SIGINT/SIGTERM, give requests in flight this long before abandoning them "
    "(a second SIGINT: at once).",
    "api_key_file": "Read the API key from this file instead of the environment variable.",
    "sandbox": "Run against a local in-process sandbox API, with its own state file; no key "
    "needed.",
    "forget_orphans": "Drop models that are in the state but not in the manifest from the state.",
    "api_key": "The one key the sandbox accepts (a test value, not a real key).",
    "load_seconds": "How long a model stays 'loading' before 'model_ready'.",
    "max_queued": "More requests in flight than this get 429 with retry_after.",
    "request_log": "Write a JSON line per request received (key masked).",
    "legacy_errors": "Answer errors in the older styles a client must also read: bad parameters "
    "and a missing key in HTTP 200 bodies, object messages, the 'messege' spelling (default: "
    "the published HTTP 400/401 {status, message, code}).",
    "output": "text for people, json for pipelines (on stdout).",
    "state": "State file (default: .modelsync/<manifest stem>.state.json beside the manifest; "
    "or MODELSYNC_STATE).",
    "endpoint": "load_model URL (default: MODELSYNC_ENDPOINT, then target.endpoint, then the "
    "public API).",
    "detailed_exitcode": "Exit 2 when there are changes to apply (0: none; errors keep their "
    "codes).",
    "report": "Also write the JSON report to FILE.",
    "plan_output": "text for people, json for pipelines, markdown for a pull-request comment "
    "(on stdout; apply takes markdown with --dry-run only).",
    "junit_xml": "Also write the run as JUnit XML to FILE (a test case per model acted on).",
    "metrics_file": "Also write Prometheus metrics to FILE, for node_exporter's textfile "
    "collector (see docs/cron.md).",
    "latency": "Added to every load_model answer.",
    "retry_after": "retry_after in 429 answers.",
    "skip_schema_creation": "Never create a PostgreSQL state's tables (a DBA made them with "
    "'modelsync state ddl'); ignored for a file state.",
    "migrate_to": "The state to copy into: a path or a postgresql:// URL; it must be empty.",
    "epoch": "The lease epoch to break, as the 'locked' error names it.",
    "strict": "Treat the manifest's warnings (deprecated categories, suspicious links) as "
    "errors: exit 3, send nothing.",
    "format": "json, sarif (SARIF 2.1.0) or github (workflow commands): that document on "
    "stdout; problems stay on stderr.",
    "selector": "Only models whose labels match key=value or key!=value (repeatable).",
    "color": "Colour in text output; NO_COLOR in the environment means never.",
    "log_format": "Logs on stderr as text lines or as one JSON object per line.",
}


def _MANY(metavar: str) -> dict[str, Any]:
    return {"multiple": True, "metavar": metavar, "show_default": False}


_TEXT_JSON = click.Choice(["text", "json"])
_OUTPUT: Decorator = _opt(
    "--output", _TEXT_JSON, "text", _HELP["output"], param_decls=["-o", "output_format"]
)
# plan and apply --dry-run also render Markdown; `state list` keeps text and json.
_PLAN_OUTPUT: Decorator = _opt(
    "--output",
    click.Choice(["text", "json", "markdown"]),
    "text",
    _HELP["plan_output"],
    param_decls=["-o", "output_format"],
)
_TARGET: Decorator = _options(
    _opt("--state", None, None, _HELP["state"], metavar="PATH"),
    _opt("--endpoint", None, None, _HELP["endpoint"], metavar="URL"),
)
_SELECTION: Decorator = _options(
    _opt("--only", None, (), "Only these model ids (glob; repeatable).", **_MANY("ID")),
    _opt("--exclude", None, (), "Skip these model ids (glob; repeatable).", **_MANY("ID")),
    _opt("--selector", None, (), _HELP["selector"], param_decls=["-l"], **_MANY("KEY=VALUE")),
    _PLAN_OUTPUT,
    _flag("--strict", _HELP["strict"]),
)


def _lock_timeout(help_text: str) -> Callable[[F], F]:
    return _seconds("--lock-timeout", defaults.LOCK_TIMEOUT_S, help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    __version__, "--version", prog_name="modelsync", message="%(prog)s %(version)s"
)
@click.option("-v", "--verbose", count=True, help="More output (repeat for debug logs).")
@click.option("-q", "--quiet", count=True, help="Less output: errors and the product only.")
@_opt("--color", click.Choice(["auto", "always", "never"]), "auto", _HELP["color"])
@_opt("--log-format", _TEXT_JSON, "text", _HELP["log_format"])
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


def main(args: Sequence[str] | None = None) -> int:
    """Run the command line; exceptions become messages and exit codes in one place."""
    from modelsync.error_handler import run

    return run(cli, args, verbosity=lambda: _VERBOSE["flag"])


# --------------------------------------------------------------------------- helpers


def _settings(manifest: str, options: dict[str, Any]) -> Any:
    from modelsync.settings import Settings

    command = "modelsync " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return Settings.from_options(manifest, options, command=command)


def _print_plan(plan: Any, manifest: str, state: str, output_format: str) -> None:
    g = _globals()
    output.print_plan(plan, manifest, state, output_format, verbose=g.verbosity >= 1, color=g.color)


def _annotate(text: str, *, err: bool = True) -> None:
    """Workflow commands as raw lines (never JSON log records: GitHub reads the lines)."""
    if text:
        output.echo(text, err=err)


# --------------------------------------------------------------------------- commands


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=True))
@_flag("--strict", _HELP["strict"])
@_opt("--format", click.Choice(findings.FORMATS), "text", _HELP["format"], ["output_format"])
def validate(manifests: Sequence[str], strict: bool, output_format: str) -> int:
    """Check manifests and print every problem, with file:line:column and the fix.

    With GITHUB_ACTIONS=true, validate, plan and apply also print the manifest's problems
    (apply: also its failed and conflicting models) as GitHub workflow commands
    (::error file=...,line=...::...) on stderr, so that stdout stays the product.

    \b
    Exit 0 when every manifest is valid, 3 when any is not.
    Examples:
      modelsync validate manifests/*.yaml
      modelsync validate manifests/*.yaml --format sarif > modelsync.sarif
    """
    from modelsync.commands.validate import validate as run

    quiet = _globals().verbosity < 0 or output_format != "text"  # stdout: the document only
    results = []
    for checked in run(manifests, strict=strict):
        output.print_checked(checked, quiet=quiet)
        results.append(checked)
    _annotate(findings.render(results, output_format), err=False)  # "" for text
    _annotate(github.checked_annotations(results) if output_format != "github" else "")
    return int(ExitCode.OK if all(c.error is None for c in results) else ExitCode.MANIFEST)


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


@cli.command()
@click.argument("manifest", type=click.Path())
@_TARGET
@_SELECTION
@_flag("--detailed-exitcode", _HELP["detailed_exitcode"])
def plan(manifest: str, output_format: str, detailed_exitcode: bool, **options: Any) -> int:
    """Show what apply would do. Never writes the state, never calls the API.

    \b
    Examples:
      modelsync plan manifests/prod.yaml
      modelsync plan manifests/prod.yaml --only 'sdxl-*' --selector team=portraits
      modelsync plan manifests/prod.yaml --output json --detailed-exitcode
    """
    from modelsync.commands.plan import plan as run

    settings = _settings(manifest, options)
    github.annotate_manifest(settings, _annotate)  # GitHub Actions: problems as annotations
    output.print_warnings(settings.manifest, settings.selection)  # validates it first
    planned = run(settings)
    _print_plan(planned.plan, manifest, planned.state_location, output_format)
    changes = detailed_exitcode and planned.plan.has_changes
    return int(ExitCode.CHANGES if changes else ExitCode.OK)


@cli.command()
@click.argument("manifest", type=click.Path())
@_TARGET
@_SELECTION
@_opt("--parallelism", click.IntRange(1, 64), defaults.PARALLELISM, _HELP["parallelism"])
@_opt("--max-attempts", click.IntRange(1, 100), defaults.MAX_ATTEMPTS, _HELP["max_attempts"])
@_seconds("--max-retry-after", defaults.MAX_RETRY_AFTER_S, _HELP["max_retry_after"])
@_seconds("--deadline", None, _HELP["deadline"], positive=True)
@_lock_timeout("Wait this long for another run's state lock (0: fail at once, exit 4).")
@_opt("--api-key-file", click.Path(dir_okay=False), None, _HELP["api_key_file"], metavar="PATH")
@_opt("--report", click.Path(dir_okay=False, writable=True), None, _HELP["report"], metavar="FILE")
@_opt("--junit-xml", click.Path(dir_okay=False), None, _HELP["junit_xml"], metavar="FILE")
@_opt("--metrics-file", click.Path(dir_okay=False), None, _HELP["metrics_file"], metavar="FILE")
@_seconds("--grace", defaults.GRACE_S, _HELP["grace"])
@_flag("--dry-run", "Show the plan with these flags; send nothing.")
@_flag("--sandbox", _HELP["sandbox"])
@_flag("--forget-orphans", _HELP["forget_orphans"])
@_flag("--skip-schema-creation", _HELP["skip_schema_creation"])
def apply(
    manifest: str, output_format: str, report: str | None, dry_run: bool, **options: Any
) -> int:
    """Submit every create, update and retry to load_model, recording each result.

    The whole manifest is validated first: nothing is sent if any entry is invalid.

    \b
    Examples:
      MODELSYNC_API_KEY=... modelsync apply manifests/prod.yaml
      modelsync apply --sandbox manifests/example.yaml
      modelsync apply manifests/prod.yaml --exclude 'experimental-*' --report report.json
    """
    from modelsync.commands.apply import apply as run
    from modelsync.controls import StopFlag, stop_on_signals
    from modelsync.runner import ApplyOptions

    sandbox = options.pop("sandbox")
    if sandbox and (options["endpoint"] or options["api_key_file"]):
        raise UsageError("--sandbox runs against a local sandbox: drop --endpoint/--api-key-file")
    junit_xml, metrics_file = options.pop("junit_xml"), options.pop("metrics_file")
    if output_format == "markdown" and not dry_run:
        raise UsageError("--output markdown shows a plan: use it with plan or apply --dry-run")
    files = {"--report": report, "--junit-xml": junit_xml, "--metrics-file": metrics_file}
    for option, path in files.items():
        if path:
            output.check_writable(path, option)  # before anything is sent (exit 64)
    settings = _settings(manifest, options)
    github.annotate_manifest(settings, _annotate)  # GitHub Actions: problems as annotations
    output.print_warnings(settings.manifest, settings.selection)  # validates it first
    stop = StopFlag()
    progress = output.Progress(enabled=output_format == "text" and not dry_run)
    with stop_on_signals(stop, output.stderr, options["grace"]), progress:

        def on_plan(the_plan: Any, state: str) -> None:
            if output_format == "text" or dry_run:
                _print_plan(the_plan, manifest, state, output_format)
            progress.start(len(the_plan.to_submit))

        applied = run(
            settings,
            ApplyOptions(
                deadline_s=options.pop("deadline"), grace_s=options.pop("grace"), **options
            ),
            sandbox=sandbox,
            dry_run=dry_run,
            stop=stop,
            on_plan=on_plan,
            on_result=progress.result,
        )
    where = [manifest] + [
        f"--{k}={v}" for k in ("state", "endpoint") if (v := getattr(settings, k))
    ]
    g = _globals()
    output.print_applied(applied, output_format, report, color=g.color, manifest=shlex.join(where))
    _annotate(github.result_annotations(settings.manifest, applied.report))
    output.write_run_files(applied.report, manifest, junit_xml, metrics_file)
    return int(applied.exit_code)


# --------------------------------------------------------------------------- sandbox


@cli.command()
@_opt("--host", str, defaults.SANDBOX_HOST, "Address to bind.")
@_opt("--port", click.IntRange(0, 65535), defaults.SANDBOX_PORT, "Port (0: a free one).")
@_opt("--api-key", str, defaults.SANDBOX_KEY, _HELP["api_key"])
@_opt("--latency", click.FloatRange(0), 0.0, _HELP["latency"], ["latency_ms"], metavar="MS")
@_opt("--load-seconds", click.FloatRange(0), defaults.SANDBOX_LOAD_SECONDS, _HELP["load_seconds"])
@_opt("--max-queued", click.IntRange(1), defaults.SANDBOX_MAX_QUEUED, _HELP["max_queued"])
@_opt(
    "--retry-after",
    click.IntRange(0),
    defaults.SANDBOX_RETRY_AFTER_S,
    _HELP["retry_after"],
    metavar="SECONDS",
)
@_rate("--fail-rate", "Probability of a 5xx answer.")
@_rate("--reset-rate", "Probability of dropping the connection after reading the request.")
@_rate("--garbage-rate", "Probability of a 200 with an unreadable body.")
@_opt("--seed", int, None, "Seed for the fault draws (repeatable runs).")
@_opt("--request-log", click.Path(dir_okay=False), None, _HELP["request_log"], metavar="FILE")
@_flag("--legacy-errors", _HELP["legacy_errors"])
def sandbox(request_log: str | None, **config: Any) -> int:
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

    def ready(running: Any) -> None:
        output.stderr(f"Sandbox listening on {running.url}")
        output.stderr(f"load_model: {running.load_model_url}")
        sys.stderr.flush()

    log_path = Path(request_log) if request_log else None
    serve_forever(SandboxConfig(request_log=log_path, **config), ready=ready)
    return 0


# The state command group lives beside this module; registered last, once the shared
# options above exist.
from modelsync.cli_state import state  # noqa: E402

cli.add_command(state)
