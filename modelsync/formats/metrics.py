"""An apply as Prometheus metrics, for node_exporter's textfile collector (DESIGN §9).

``apply --metrics-file FILE`` writes the text exposition format. The file is rewritten
after every run (atomically, by :func:`modelsync.output.write_file`), so the last success
time is carried over from the previous file when this run did not succeed: the alert
"no success in 2 days" is then one line of PromQL.

The runtime needs no Prometheus library: the format is a few lines of text, and the old
file is read with the one pattern it needs.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.runner import Report

OUTCOMES = ("submitted", "failed", "conflict", "skipped", "unchanged")
CLASSES = ("2xx", "4xx", "5xx", "error")
LAST_SUCCESS = "modelsync_last_success_timestamp_seconds"
# A metrics file is small; a huge one is not ours, and is not read whole.
MAX_PREVIOUS_BYTES = 1 << 20

HELP = {
    "modelsync_last_run_timestamp_seconds": "When the last apply ended (Unix time).",
    LAST_SUCCESS: "When an apply last ended with exit code 0 (Unix time), carried over from "
    "the previous file by runs that did not succeed; 0: no success recorded yet.",
    "modelsync_models": "Models in the last apply by outcome (unchanged: nothing to send).",
    "modelsync_last_run_requests": "Models sent in the last apply by the HTTP status class of "
    "their last answer (error: no HTTP answer, such as a refused connection or a timeout, or "
    "a redirect); one per model, not one per attempt.",
    "modelsync_last_run_rate_limited": "Answers in the last apply that asked modelsync to slow "
    "down (HTTP 429 or a rate-limit message); they are waited out and use no attempt.",
    "modelsync_run_duration_seconds": "How long the last apply took to submit its models.",
    "modelsync_exit_code": "The last apply's exit code (0: success; see docs/cron.md).",
}


def label_value(text: str) -> str:
    """A label value as the exposition format spells it (backslash, quote, newline)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def status_class(http_status: int | None) -> str:
    """``2xx``, ``4xx``, ``5xx``, or ``error`` (no answer, or a status of another class)."""
    if http_status is not None and http_status // 100 in (2, 4, 5):
        return f"{http_status // 100}xx"
    return "error"


def requests_by_class(report: Report) -> dict[str, int]:
    """Models that were sent, by the status class of their last answer."""
    counts = dict.fromkeys(CLASSES, 0)
    for result in report.results:
        if result.attempts > 0:
            counts[status_class(result.http_status)] += 1
    return counts


def previous_success(text: str, manifest: str) -> float | None:
    """The last success time an earlier file recorded for ``manifest``, if any.

    A sample labelled with another manifest (the file was shared or renamed) is used
    only when there is none for this one; of several, the latest.
    """
    pattern = re.compile(
        rf"^{LAST_SUCCESS}(?:\{{(?P<labels>[^}}]*)\}})?[ \t]+(?P<value>\S+)", re.MULTILINE
    )
    mine = f'manifest="{label_value(manifest)}"'
    found: list[tuple[bool, float]] = []
    for match in pattern.finditer(text):
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if value == value and value > 0:  # not NaN, and a success was recorded
            found.append((mine in (match["labels"] or ""), value))
    found.sort()  # this manifest's first, then the latest
    return found[-1][1] if found else None


def read_previous_success(path: str, manifest: str) -> float | None:
    """:func:`previous_success` of the file at ``path``; None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PREVIOUS_BYTES)
    except OSError:
        return None
    return previous_success(data.decode("utf-8", errors="replace"), manifest)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def render_metrics(report: Report, *, manifest: str, now: float, last_success: float | None) -> str:
    """The run in the Prometheus text format; ``last_success``: the previous file's."""
    if int(report.exit_code) == 0:
        last_success = now
    label = f'manifest="{label_value(manifest)}"'
    by_outcome = report.summary
    samples: dict[str, list[tuple[str, float]]] = {
        "modelsync_last_run_timestamp_seconds": [(label, now)],
        LAST_SUCCESS: [(label, last_success or 0)],
        "modelsync_models": [(f'{label},outcome="{o}"', by_outcome[o]) for o in OUTCOMES],
        "modelsync_last_run_requests": [
            (f'{label},class="{c}"', n) for c, n in requests_by_class(report).items()
        ],
        "modelsync_last_run_rate_limited": [(label, report.rate_limited)],
        "modelsync_run_duration_seconds": [(label, report.duration_s)],
        "modelsync_exit_code": [(label, int(report.exit_code))],
    }
    lines: list[str] = []
    for name, values in samples.items():
        lines.append(f"# HELP {name} {HELP[name]}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{{{labels}}} {_number(value)}" for labels, value in values)
    return redact("\n".join(lines) + "\n")


def render_file(path: str, report: Report, manifest: str) -> str:
    """What ``--metrics-file`` writes now: this run, and the last success ``path`` holds."""
    last = read_previous_success(path, manifest)
    return render_metrics(report, manifest=manifest, now=time.time(), last_success=last)
