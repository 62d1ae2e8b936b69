"""Rendering for people and pipelines: diagnostics, plans, reports, logs; all redacted.

Logs and progress go to stderr; the product (plan, report, JSON) goes to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, TextIO

import click

from modelsync.defaults import LOG_VERBOSE
from modelsync.errors import Diagnostic
from modelsync.redact import RedactingFilter, redact

if TYPE_CHECKING:
    from modelsync.commands.apply import Applied
    from modelsync.commands.validate import Checked
    from modelsync.manifest import Manifest
    from modelsync.plan import Plan, Selection
    from modelsync.records import State
    from modelsync.runner import ModelResult as ApplyResult
    from modelsync.runner import Report

LOGGER_NAME = "modelsync"


def plural(n: int, word: str) -> str:
    """``1 model``, ``2 models``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def color_enabled(choice: str, stream: IO[str]) -> bool:
    """Colour for ``--color`` auto/always/never; NO_COLOR (any value) means never."""
    if choice == "never" or os.environ.get("NO_COLOR", "") != "":
        return False
    if choice == "always":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """Write redacted text to stdout (the product) or stderr (everything else)."""
    click.echo(redact(text), err=err, nl=nl)


_LOG_FORMAT = {"json": False}


def set_log_format(log_format: str) -> None:
    """Choose how :func:`stderr` writes: plain lines or JSON records."""
    _LOG_FORMAT["json"] = log_format == "json"


def json_logs() -> bool:
    """True when messages on stderr are JSON records (--log-format json)."""
    return _LOG_FORMAT["json"]


def stderr(text: str, level: int | None = None) -> None:
    """A message for people on stderr: a plain line, or a JSON log record with --log-format json.

    With ``level`` None it is read from the text: ``Error: ...`` is an error,
    ``warning: ...`` a warning, anything else information.
    """
    text = redact(text)
    if level is None:
        if text.startswith("Error: "):
            level = logging.ERROR
        elif text.startswith("warning: "):
            level = logging.WARNING
        else:
            level = logging.INFO
    if _LOG_FORMAT["json"]:
        for prefix in ("Error: ", "warning: "):
            text = text.removeprefix(prefix)
        logging.getLogger(LOGGER_NAME).log(level, text)
    else:
        click.echo(text, err=True)


def print_diagnostics(diagnostics: Iterable[Diagnostic]) -> None:
    """Print manifest problems on stderr, one per line, sorted by position."""
    for diagnostic in sorted(diagnostics):
        stderr(str(diagnostic), logging.ERROR)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in ("model_id", "attempt", "http_status", "outcome"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class _TextFormatter(logging.Formatter):
    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        model_id = getattr(record, "model_id", None)
        if model_id and not message.startswith(f"{model_id}: "):
            message = f"{model_id}: {message}"
        level = record.levelname.lower()
        if record.levelno >= logging.WARNING:
            prefix = f"{level}: "
            if self.color:
                prefix = click.style(
                    prefix, fg="red" if record.levelno >= logging.ERROR else "yellow"
                )
            message = prefix + message
        return redact(message)


def setup_logging(verbosity: int, log_format: str, *, color: bool) -> logging.Logger:
    """One stderr handler on the ``modelsync`` logger, with the redacting filter."""
    set_log_format(log_format)
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter(color))
    logger.addHandler(handler)
    logger.propagate = False
    if verbosity >= 2:
        level = logging.DEBUG
    elif verbosity == 1:
        level = LOG_VERBOSE  # the details of what went wrong, not every attempt
    elif verbosity >= 0:
        level = logging.INFO
    else:
        level = logging.WARNING
    logger.setLevel(level)
    return logger


# --------------------------------------------------------------------------- plans

_COLORS = {
    "create": "green",
    "update": "yellow",
    "retry": "cyan",
    "conflict": "magenta",
    "orphan": "red",
}


def _value(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, ensure_ascii=False)


def render_plan(
    plan: Plan, *, manifest: str, state: str, verbose: bool = False, color: bool = False
) -> str:
    """The plan for people: one line per change, changed fields, the summary line."""
    from modelsync.plan import SYMBOLS

    lines: list[str] = []
    shown = [c for c in plan.changes if verbose or c.action != "unchanged"]
    width = max((len(c.model_id) for c in shown), default=0)
    for change in shown:
        symbol = SYMBOLS[change.action]
        head = f"  {symbol} {change.model_id.ljust(width)}  {change.action}"
        if change.submits:
            head += f" (force_load: {change.force_load})"
        if change.action == "retry" and change.previous is not None:
            reason = change.previous.last_error or f"last run left it {change.previous.status}"
            head += f": {reason}"
        if change.action == "orphan":
            head += ": in the state, not in the manifest; nothing is deleted remotely"
        if change.action == "conflict":
            head += ": on the account, not put there by modelsync; apply skips it"
        if color and change.action in _COLORS:
            head = click.style(head, fg=_COLORS[change.action])
        lines.append(head)
        for name, diff in change.fields.items():
            lines.append(f"      {name}: {_value(diff.before)} → {_value(diff.after)}")
    if not plan.has_changes and not any(c.action == "orphan" for c in plan.changes):
        lines.append("No changes: the account holds what the manifest declares.")
    lines.append(summary_line(plan))
    return redact("\n".join(lines))


def summary_line(plan: Plan) -> str:
    """``Plan: 2 to create, 1 to update, 0 to retry, 14 unchanged, 1 orphaned.``"""
    s = plan.summary
    conflicts = f", {s['conflict']} in conflict" if s["conflict"] else ""
    return (
        f"Plan: {s['create']} to create, {s['update']} to update, {s['retry']} to retry"
        f"{conflicts}, {s['unchanged']} unchanged, {s['orphan']} orphaned."
    )


def plan_document(plan: Plan, *, manifest: str, state: str) -> dict[str, Any]:
    """The plan for pipelines, in the shape of DESIGN §3 (schemas/plan.schema.json)."""
    changes = []
    for change in plan.changes:
        if change.action == "unchanged":
            continue
        changes.append(
            {
                "model_id": change.model_id,
                "action": change.action,
                "force_load": change.force_load,
                "fields": {
                    name: {"before": diff.before, "after": diff.after}
                    for name, diff in change.fields.items()
                },
            }
        )
    return {
        "format_version": 1,
        "manifest": manifest,
        "state": state,
        "summary": plan.summary,
        "changes": changes,
    }


def dump_json(document: Any) -> str:
    """JSON for stdout and report files, secrets masked."""
    return redact(json.dumps(document, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- apply


class Progress:
    """A bar on a TTY, a log line per result otherwise; both on stderr."""

    def __init__(self, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self._log = logging.getLogger(LOGGER_NAME + ".progress")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None

    def start(self, total: int) -> None:
        """Begin showing progress over ``total`` submissions."""
        isatty = getattr(self.stream, "isatty", None)
        if self.enabled and total and isatty is not None and isatty():
            self._bar = click.progressbar(
                length=total, label="Applying", file=self.stream, show_pos=True
            )
            self._bar.render_progress()

    def result(self, result: ApplyResult) -> None:
        """Show one result as it comes."""
        if self._bar is not None:
            self._bar.update(1)
        level = logging.INFO if result.outcome == "submitted" else logging.WARNING
        if self._bar is not None and level < logging.WARNING:
            return
        attempts = plural(result.attempts, "attempt")
        self._log.log(
            level,
            "%s (%s, %s, %.2f s)%s",
            result.outcome,
            result.action,
            attempts,
            result.duration_s,
            "" if result.outcome == "submitted" else f": {result.message}",
            extra={
                "model_id": result.model_id,
                "outcome": result.outcome,
                "attempt": result.attempts,
                "http_status": result.http_status,
            },
        )


def render_summary(report: Report, *, color: bool = False, manifest: str = "MANIFEST") -> str:
    """The end of an apply, for people: counts, then every failure with its reason."""
    s = report.summary
    conflicts = f", {s['conflict']} in conflict" if s["conflict"] else ""
    line = (
        f"Apply: {s['submitted']} submitted, {s['failed']} failed{conflicts}, "
        f"{s['skipped']} skipped, {s['unchanged']} unchanged."
    )
    if color:
        line = click.style(line, fg="green" if report.exit_code == 0 else "red", bold=True)
    lines = [line]
    problems = [r for r in report.results if r.outcome != "submitted"]
    if problems:
        lines.append("Not submitted:")
        for r in problems:
            lines.append(f"  {r.model_id} ({r.action}, {r.outcome}): {r.message}")
    if report.stop_reason:
        lines.append(f"Stopped: {report.stop_reason}.")
    if report.forgotten:
        lines.append(
            f"Forgot {plural(len(report.forgotten), 'orphan')}: " + ", ".join(report.forgotten)
        )
    if any(r.outcome == "failed" for r in report.results):
        lines.append("Failed models are retried by the next apply.")
    lines.extend(ways_on(report, manifest))
    return redact("\n".join(lines))


def ways_on(report: Report, manifest: str) -> list[str]:
    """What to do about models on the account that modelsync did not put there.

    ``manifest`` is the command line's tail for ``state adopt``: the manifest, and the
    --state/--endpoint the run was given, so that the printed command works as printed.
    """
    model_ids = [r.model_id for r in report.results if r.outcome == "conflict"]
    if not model_ids:
        return []
    ids = " ".join(shlex.quote(m) for m in model_ids)
    return [
        f"In conflict: {', '.join(model_ids)}: a model of this id is on the account and "
        "modelsync did not put it there; apply never replaces it on its own. Ways on:",
        f"  - it is the right model: modelsync state adopt {ids} {manifest}",
        "  - replace it: set force_load: yes on the entry, then apply",
        "  - keep both: give the entry another model_id",
    ]


def check_writable(path: str, option: str) -> None:
    """Fail before anything is sent when an output file could not be written (exit 64)."""
    from modelsync.errors import UsageError

    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"{option} {path}: is a folder; give a file path")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (
        os.path.exists(target) and not os.access(target, os.W_OK)
    ):
        raise UsageError(f"{option} {path}: not writable; fix its permissions or pick another")


def write_file(path: str, text: str, what: str, mode: int | None = None) -> None:
    """Write an output file atomically (a reader never sees half of it): a temp file in its
    folder, then os.replace."""
    import tempfile

    from modelsync.errors import OutputError

    folder = os.path.dirname(os.path.abspath(path))
    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".modelsync.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as exc:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)
        raise OutputError(
            f"cannot write {what} {path}: {exc.strerror}; the run itself is recorded in the state"
        ) from None


def write_run_files(
    report: Report | None, manifest: str, junit_xml: str | None, metrics_file: str | None
) -> None:
    """``--junit-xml`` and ``--metrics-file`` (DESIGN §9); nothing for a --dry-run."""
    from modelsync.formats import junit, metrics

    if report is not None and junit_xml:
        write_file(junit_xml, junit.render_junit(report, manifest=manifest), "the JUnit file")
    if report is not None and metrics_file:  # 0644: node_exporter reads it as another user
        text = metrics.render_file(metrics_file, report, manifest)
        write_file(metrics_file, text, "the metrics file", 0o644)


def render_state_list(state: State) -> str:
    """The state's models, one line each, for people."""
    if not state.exists:
        return f"No state yet at {state.location}: the first apply creates it."
    lines = [f"State {state.location} (serial {state.serial}, endpoint {state.endpoint}):"]
    width = max((len(m) for m in state.models), default=0)
    for model_id in sorted(state.models):
        record = state.models[model_id]
        when = record.submitted_at or record.last_attempt_at or "-"
        line = f"  {model_id.ljust(width)}  {record.status:<9}  {when}"
        if record.last_error:
            line += f"  {record.last_error}"
        lines.append(line)
    lines.append(plural(len(state.models), "model") + ".")
    return redact("\n".join(lines))


# --------------------------------------------------------------------------- commands


def print_plan(
    plan: Plan, manifest: str, state: str, output_format: str, *, verbose: bool, color: bool
) -> None:
    """The plan on stdout: JSON for pipelines, text for people."""
    if output_format == "json":
        click.echo(dump_json(plan_document(plan, manifest=manifest, state=state)))
        return
    if output_format == "markdown":
        from modelsync.formats.markdown import render_markdown

        click.echo(render_markdown(plan, manifest=manifest, summary=summary_line(plan)))
        return
    text = render_plan(plan, manifest=manifest, state=state, verbose=verbose, color=color)
    # click strips escapes on a non-terminal unless told: --color always must survive a pipe
    # (`| less -R`), and `color` already holds the --color/NO_COLOR decision.
    click.echo(text, color=color)


def print_warnings(manifest: Manifest, selection: Selection) -> None:
    """The manifest's warnings; --only/--exclude patterns and --selector label keys that
    match no model (typos)."""
    for warning in manifest.warnings:
        stderr(str(warning), logging.WARNING)
    ids = [m.model_id for m in manifest.models]
    for pattern in selection.unmatched_patterns(ids):
        stderr(f"warning: --only/--exclude pattern {pattern!r} matches no model id")
    labels = (key for m in manifest.models for key in m.labels)
    for line in selection.unknown_labels(labels, manifest.path):
        stderr(line)


def print_checked(checked: Checked, *, quiet: bool) -> bool:
    """One manifest's validation: problems and warnings on stderr; True when valid."""
    if checked.error is not None:
        print_diagnostics(checked.error.diagnostics)
        problems = plural(len(checked.error.diagnostics), "problem")
        stderr(f"{checked.path}: invalid ({problems})", logging.ERROR)
        return False
    assert checked.manifest is not None
    for warning in checked.manifest.warnings:
        stderr(str(warning), logging.WARNING)
    if not quiet:
        click.echo(f"{checked.path}: valid ({plural(len(checked.manifest.models), 'model')})")
    return True


def print_applied(
    applied: Applied, output_format: str, report_path: str | None, *, color: bool, manifest: str
) -> None:
    """The end of an apply: the report (file, JSON or text summary) and the auth fix."""
    if applied.report is None:
        return
    document = applied.report.to_json()
    if report_path:
        write_file(report_path, dump_json(document) + "\n", "the report")
    if output_format == "json":
        click.echo(dump_json(document))
        for line in ways_on(applied.report, manifest):
            stderr(line)
    else:
        summary = render_summary(applied.report, color=color, manifest=manifest)
        click.echo(summary, color=color)
    if applied.auth_hint:
        stderr(f"Error: {applied.auth_hint}")
    if applied.report.state_error:
        stderr(f"Error: {applied.report.state_error}")
