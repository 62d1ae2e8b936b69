"""GitHub Actions workflow commands: ``::error file=F,line=L,col=C,title=T::message``.

GitHub reads these lines from a step's stdout and stderr alike and shows each as an
annotation on the pull request's diff. ``validate --format github`` prints them on stdout
as its product; with ``GITHUB_ACTIONS=true`` in the environment, validate, plan and apply
also print them on stderr, beside their usual output, so that stdout (a plan, a report,
JSON) stays what it was. Values are escaped as GitHub's toolkit does (``escapeData`` and
``escapeProperty`` in @actions/core), after secrets are masked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING

from modelsync.errors import Diagnostic, ManifestError
from modelsync.formats.findings import Finding, checked_findings, findings
from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.commands.validate import Checked
    from modelsync.manifest import Manifest
    from modelsync.runner import Report
    from modelsync.settings import Settings

# The outcomes of apply that are annotated (both make apply exit 1).
ANNOTATED_OUTCOMES = ("failed", "conflict")


def in_actions(env: Mapping[str, str] | None = None) -> bool:
    """True inside a GitHub Actions job (the runner sets ``GITHUB_ACTIONS=true``)."""
    env = os.environ if env is None else env
    return env.get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    """A message: '%', CR and LF escaped, so one annotation stays one line."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A property value (file, title): also ':' and ',', which separate properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(
    level: str,
    message: str,
    *,
    file: str | None = None,
    line: int = 0,
    column: int = 0,
    title: str | None = None,
) -> str:
    """One workflow command; a line or column of 0 is left out (the whole file)."""
    properties: list[str] = []
    if file:
        properties.append("file=" + escape_property(redact(PurePath(file).as_posix())))
    if line > 0:
        properties.append(f"line={line}")
        if column > 0:
            properties.append(f"col={column}")
    if title:
        properties.append("title=" + escape_property(redact(title)))
    head = f"::{level} " + ",".join(properties) if properties else f"::{level}"
    # Masked before escaping: an escaped secret would no longer be found.
    return redact(f"{head}::{escape_data(redact(message))}")


def render_findings(found: Iterable[Finding]) -> str:
    """Findings as workflow commands, one line each ("" when there are none)."""
    return "\n".join(
        command(
            f.level,
            f.message,
            file=f.file,
            line=f.line,
            column=f.column,
            title=f"modelsync {f.rule.id}",
        )
        for f in found
    )


def manifest_annotations(
    errors: Iterable[Diagnostic],
    warnings: Iterable[Diagnostic] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    """In GitHub Actions, a manifest's errors and warnings as workflow commands; else ""."""
    if not in_actions(env):
        return ""
    return render_findings(findings(errors, warnings))


def checked_annotations(results: Sequence[Checked], env: Mapping[str, str] | None = None) -> str:
    """In GitHub Actions, validate's errors and warnings as workflow commands; else ""."""
    if not in_actions(env):
        return ""
    return render_findings(f for checked in results for f in checked_findings(checked))


def annotate_manifest(settings: Settings, write: Callable[[str], None]) -> None:
    """Validate the manifest (plan, apply); in GitHub Actions, ``write`` its annotations.

    A ManifestError goes on, after its annotations, to the one place that reports it.
    """
    try:
        warnings = settings.manifest.warnings
    except ManifestError as exc:
        write(manifest_annotations(exc.diagnostics))
        raise
    write(manifest_annotations((), warnings))


def result_annotations(
    manifest: Manifest, report: Report | None, env: Mapping[str, str] | None = None
) -> str:
    """In GitHub Actions, apply's failed and conflicting models, at their manifest line."""
    if report is None or not in_actions(env):
        return ""
    lines = []
    for result in report.results:
        if result.outcome not in ANNOTATED_OUTCOMES:
            continue
        spec = manifest.model(result.model_id)
        lines.append(
            command(
                "error",
                f"{result.model_id}: {result.outcome} ({result.action}): {result.message}",
                file=manifest.path,
                line=spec.line if spec is not None else 0,
                title=f"modelsync apply {result.outcome}",
            )
        )
    return "\n".join(lines)
