"""``validate --format sarif``: SARIF 2.1.0, for GitHub code scanning and other SARIF readers.

One run, the tool ``modelsync`` with every rule of :mod:`modelsync.formats.findings`
(the catch-all last), one result per error or warning, each with its rule id, its level,
and a physical location: the manifest's path as given (a relative path stays relative,
which code scanning resolves against the repository's root) and the region's start line
and column (1 and 1 for a problem of the whole file, such as a missing file).
"""

from __future__ import annotations

import importlib.metadata
import json
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from modelsync import __version__
from modelsync.formats.findings import Finding, all_rules, checked_findings
from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.commands.validate import Checked

VERSION = "2.1.0"
SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
# The project's page for tool.driver.informationUri, in this order of preference, from
# the package's metadata (pyproject.toml [project.urls]).
_URL_LABELS = ("documentation", "homepage", "repository", "source")


def information_uri() -> str | None:
    """The project's URL as the installed package declares it; None when it declares none."""
    try:
        declared = importlib.metadata.metadata("modelsync").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a copy
        return None
    urls: dict[str, str] = {}
    for entry in declared:
        label, _, url = entry.partition(",")
        urls.setdefault(label.strip().casefold(), url.strip())
    return next((urls[label] for label in _URL_LABELS if urls.get(label)), None)


def artifact_uri(path: str) -> str:
    """A manifest path as a URI reference: relative stays relative (``./`` dropped)."""
    pure = PurePath(path)
    if pure.is_absolute():
        return Path(path).as_uri()
    return urllib.parse.quote(pure.as_posix(), safe="/")


def _driver() -> dict[str, Any]:
    driver: dict[str, Any] = {"name": "modelsync", "version": __version__}
    uri = information_uri()
    if uri:
        driver["informationUri"] = uri
    driver["rules"] = [
        {
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.short},
            "defaultConfiguration": {"level": rule.level},
        }
        for rule in all_rules()
    ]
    return driver


def _result(finding: Finding, index: dict[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": finding.rule.id,
        "ruleIndex": index[finding.rule.id],
        "level": finding.level,
        "message": {"text": redact(finding.message)},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri(finding.file)},
                    "region": {
                        "startLine": max(finding.line, 1),
                        "startColumn": max(finding.column, 1),
                    },
                }
            }
        ],
    }
    if finding.model_id is not None:
        result["properties"] = {"model_id": finding.model_id}
    return result


def sarif_log(results: Sequence[Checked]) -> dict[str, Any]:
    """The SARIF log of a validate run: every manifest's errors and warnings."""
    index = {rule.id: i for i, rule in enumerate(all_rules())}
    return {
        "$schema": SCHEMA_URI,
        "version": VERSION,
        "runs": [
            {
                "tool": {"driver": _driver()},
                "columnKind": "unicodeCodePoints",
                "results": [
                    _result(finding, index)
                    for checked in results
                    for finding in checked_findings(checked)
                ],
            }
        ],
    }


def render(results: Sequence[Checked]) -> str:
    """The SARIF log as JSON text, secrets masked."""
    return redact(json.dumps(sarif_log(results), indent=2, ensure_ascii=False))
