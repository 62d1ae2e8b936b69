"""An apply as JUnit XML, for CI test reports (``apply --junit-xml FILE``, DESIGN §9).

One ``<testsuite>`` per run and one ``<testcase>`` per model acted on: a failed model and
a conflict are ``<failure>`` (``type`` says which), a model the run never started is
``<skipped>``. Built with ElementTree, so every value is XML-escaped; every value is
masked before it is escaped (escaping changes how a secret is spelled).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.runner import ModelResult, Report

FAILURES = ("failed", "conflict")


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _details(result: ModelResult) -> str:
    status = "none" if result.http_status is None else str(result.http_status)
    return (
        f"{result.message}\n"
        f"action: {result.action}; attempts: {result.attempts}; last HTTP status: {status}"
    )


def _testcase(suite: ET.Element, result: ModelResult, classname: str) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=classname,
        name=redact(result.model_id),
        time=_seconds(result.duration_s),
    )
    message = redact(result.message)
    if result.outcome in FAILURES:
        failure = ET.SubElement(case, "failure", message=message, type=result.outcome)
        failure.text = redact(_details(result))
    elif result.outcome == "skipped":
        ET.SubElement(case, "skipped", message=message)


def render_junit(report: Report, *, manifest: str) -> str:
    """The run as a JUnit XML document (``<testsuites>`` holding one ``<testsuite>``)."""
    summary = report.summary
    failures = sum(summary[o] for o in FAILURES)
    counts = {
        "tests": str(len(report.results)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(summary["skipped"]),
        "time": _seconds(report.duration_s),
    }
    classname = redact(manifest)
    root = ET.Element("testsuites", {"name": "modelsync apply", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": f"modelsync apply {classname}", **counts})
    properties = ET.SubElement(suite, "properties")
    facts = {
        "manifest": classname,
        "exit_code": str(int(report.exit_code)),
        "unchanged": str(report.unchanged),
    }
    if report.stop_reason:
        facts["stop_reason"] = redact(report.stop_reason)
    if report.state_error:
        facts["state_error"] = redact(report.state_error)
    for key, value in facts.items():
        ET.SubElement(properties, "property", name=key, value=value)
    for result in report.results:
        _testcase(suite, result, classname)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return redact('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n")
