"""Manifest problems as findings: a stable rule id per kind of problem; ``validate --format json``.

The manifest code words each problem for a person (``Diagnostic``: file, line, column,
message). Pipelines also need to know *which kind* of problem it is, the same id for the
same kind in every file and every run: code scanning groups alerts by it, and a team
can silence one kind. :data:`RULES` classifies messages by their wording, first match
wins; what matches none is ``manifest``. A new message in ``modelsync/manifest/`` or
``modelsync/yamlio/`` that deserves its own id gets a rule here; an id, once published,
never changes (tests/test_annotations.py pins the wording of each kind to its id).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modelsync.errors import Diagnostic
from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.commands.validate import Checked

Level = Literal["error", "warning"]
FORMATS = ("text", "json", "sarif", "github")
# A warning's message carries this marker (manifest/messages.py _Reporter.warn); the
# formats here carry the level in a field of its own and drop the marker.
_WARNING_MARK = "warning: "
_MODEL = re.compile(
    r"models\[(?P<index>\d+)\](?: \(id (?P<id>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\))?"
)


@dataclass(frozen=True)
class Rule:
    """One kind of problem: its stable id, a short description, its usual level."""

    id: str
    short: str
    level: Level = "error"
    pattern: str = ""  # a regular expression searched in the message; "" matches nothing

    @property
    def name(self) -> str:
        """The id in PascalCase (SARIF's ``reportingDescriptor.name``)."""
        return "".join(part.capitalize() for part in self.id.split("-"))


RULES: tuple[Rule, ...] = (
    # The file itself (yamlio/load.py, yamlio/compose.py).
    Rule("file-not-found", "The manifest file does not exist.", pattern=r"^no such file"),
    Rule(
        "file-unreadable",
        "The manifest cannot be read, or is not a regular file.",
        pattern=r"^(cannot read the file|not a regular file)",
    ),
    Rule(
        "file-too-large",
        "The manifest is larger than 64 MiB.",
        pattern=r"^the file is (\d+ bytes, )?(more|larger) than the 64 MiB",
    ),
    Rule(
        "file-encoding",
        "The manifest is not UTF-8 text: a binary file, or a control character.",
        pattern=r"binary file|not valid UTF-8|the control character U\+",
    ),
    Rule(
        "empty-manifest",
        "The manifest has no YAML document.",
        pattern=r"^the file is empty|^the file has no YAML document",
    ),
    # YAML (yamlio/compose.py, yamlio/build.py).
    Rule("yaml-syntax", "The file is not valid YAML.", pattern=r"YAML syntax error|not valid YAML"),
    Rule(
        "yaml-multiple-documents",
        "The file holds more than one YAML document.",
        pattern=r"more than one YAML document",
    ),
    Rule(
        "yaml-limits",
        "Nesting too deep, or aliases that expand too far (an alias bomb).",
        pattern=r"nesting is deeper than|aliases would expand",
    ),
    Rule("yaml-tag", "A YAML tag is not allowed.", pattern=r"the tag \S+ is not allowed"),
    Rule("yaml-merge", "A '<<' merge where YAML cannot merge.", pattern=r"'<<' (\(merge\)|merges)"),
    Rule(
        "yaml-unquoted",
        "A value or key that YAML reads as a number, boolean, date or null: quote it.",
        pattern=r"is read by YAML as|a mapping key must be plain text",
    ),
    Rule("duplicate-key", "A key is written twice in one mapping.", pattern=r"duplicate key "),
    # Keys and fields (manifest/messages.py).
    Rule(
        "pasted-request-body",
        "A load_model request body instead of a manifest: models go under 'models:'.",
        pattern=r"this is a load_model request body, not a manifest",
    ),
    Rule(
        "api-key-in-manifest",
        "An API key written in the manifest.",
        pattern=r"the API key must not be in the manifest",
    ),
    Rule("unknown-key", "A key the manifest schema does not know.", pattern=r"unknown key "),
    Rule("schema-required", "A required field is missing.", pattern=r"missing required field "),
    Rule(
        "schema-version",
        "The manifest's version is text or not supported.",
        pattern=r"^version: version ",
    ),
    # Links (manifest/messages.py _url_message, manifest/checks.py).
    Rule(
        "url-civitai-page",
        "A Civitai model page instead of its download link.",
        pattern=r"Civitai model page",
    ),
    Rule(
        "url-hf-blob",
        "A Hugging Face /blob/ page instead of the /resolve/ file link.",
        pattern=r"Hugging Face /blob/ link",
    ),
    Rule(
        "url-second-question-mark",
        "A second '?' in a URL glues a parameter to the previous value.",
        "warning",
        r"a second '\?' in the url",
    ),
    Rule(
        "url-format-mismatch",
        "The linked file's format is not the model_format.",
        "warning",
        r"the link is a \.\w+ file but model_format|the link asks Civitai for format=",
    ),
    Rule(
        "url-repo-id-for-file",
        "A Hugging Face repo id where a file link is expected.",
        "warning",
        r"is a Hugging Face repo id, but with model_format",
    ),
    Rule("url-http", "A plain http:// link.", "warning", r"http:// link; prefer https://"),
    Rule(
        "url-scheme",
        "A URL scheme the service cannot download from.",
        pattern=r":// scheme is not supported",
    ),
    Rule("url-whitespace", "Whitespace in a URL.", pattern=r"url: contains whitespace"),
    Rule(
        "url-not-a-link",
        "A file model's url is not an https:// link to the file.",
        pattern=r"url must be an https:// link to the file",
    ),
    Rule(
        "url-repo-id",
        "With model_format diffusers, url must be a Hugging Face repo id.",
        pattern=r"url is a Hugging Face repo id, not a link|url must be a Hugging Face repo id"
        r"|is not a valid Hugging Face repo id",
    ),
    # Checks beyond the schema (manifest/checks.py).
    Rule(
        "duplicate-model-id", "Two models with the same model_id.", pattern=r"duplicate model_id "
    ),
    Rule(
        "deprecated-category",
        "A model_category the API no longer lists.",
        "warning",
        r"model_category: (warning: )?'[^']*' is deprecated",
    ),
    Rule(
        "env-var-unset",
        "A ${VAR} whose environment variable is not set, or is empty.",
        pattern=r"environment variable \w+ is (not set|set but empty)",
    ),
    Rule(
        "env-var-syntax",
        "A ${...} that is not a variable reference.",
        pattern=r"'\$\{' without a closing|is not a variable name",
    ),
    # Values (manifest/messages.py), after the more precise kinds above.
    Rule(
        "schema-enum",
        "A value that is not one of the allowed values.",
        pattern=r"is not yes or no|is not one of |is not a subcategory the API publishes",
    ),
    Rule("invalid-model-id", "A model_id of the wrong form.", pattern=r"is not a valid model_id"),
    Rule(
        "invalid-label-name",
        "A label name of the wrong form.",
        pattern=r"label name .* is not allowed",
    ),
    Rule(
        "schema-length",
        "A value that is empty or too long.",
        pattern=r"characters long, more than|must not be empty|is empty; give it a value",
    ),
    Rule(
        "schema-type",
        "A value of the wrong type (a list, a mapping, text...).",
        pattern=r"the manifest must be a mapping|must be (a|text)\b|, not (a|an|null|text)\b",
    ),
    Rule(
        "schema-pattern",
        "An endpoint, image URL or variable name of the wrong form.",
        pattern=r"must be an http\(s\):// URL|not an environment variable name|expected form",
    ),
)
CATCH_ALL = Rule("manifest", "Another problem in the manifest.")


def all_rules() -> tuple[Rule, ...]:
    """Every rule, the catch-all last: the order of SARIF's rules (``ruleIndex``)."""
    return (*RULES, CATCH_ALL)


def rule_for(message: str) -> Rule:
    """The kind of problem a message words, by its text; the catch-all when none matches."""
    for rule, pattern in _compiled():
        if pattern.search(message):
            return rule
    return CATCH_ALL


@functools.cache
def _compiled() -> tuple[tuple[Rule, re.Pattern[str]], ...]:
    # Compiled on first use: the command line imports this module for every command.
    return tuple((rule, re.compile(rule.pattern)) for rule in RULES)


@dataclass(frozen=True)
class Finding:
    """One error or warning, classified: what every format here writes."""

    file: str
    line: int  # 0: the whole file (no position)
    column: int
    level: Level
    rule: Rule
    message: str  # as printed, without the "warning: " marker
    model_id: str | None = None
    model_index: int | None = None

    @classmethod
    def of(cls, diagnostic: Diagnostic, level: Level) -> Finding:
        """A diagnostic of the manifest code, with its rule and its model when it names one."""
        message = diagnostic.message
        if level == "warning":
            message = message.replace(": " + _WARNING_MARK, ": ", 1).removeprefix(_WARNING_MARK)
        model_id, index = _model_of(diagnostic.message)
        return cls(
            file=diagnostic.file,
            line=max(diagnostic.line, 0),
            column=max(diagnostic.column, 0) if diagnostic.line > 0 else 0,
            level=level,
            rule=rule_for(diagnostic.message),
            message=message,
            model_id=model_id,
            model_index=index,
        )

    def to_json(self) -> dict[str, Any]:
        """The finding in ``validate --format json``."""
        return {
            "file": self.file,
            "line": self.line or None,
            "column": self.column or None,
            "model_id": self.model_id,
            "model_index": self.model_index,
            "rule_id": self.rule.id,
            "level": self.level,
            "message": redact(self.message),
        }


def _model_of(message: str) -> tuple[str | None, int | None]:
    """The model a message names (``models[3] (id 'x'): ...``): its id and index."""
    match = _MODEL.match(message)
    if match is None:
        return None, None
    quoted = match.group("id")
    model_id = ast.literal_eval(quoted) if quoted else None
    return (model_id if isinstance(model_id, str) else None), int(match.group("index"))


def findings(errors: Iterable[Diagnostic], warnings: Iterable[Diagnostic] = ()) -> list[Finding]:
    """Errors and warnings as findings, each list sorted by position, errors first."""
    return [Finding.of(d, "error") for d in sorted(errors)] + [
        Finding.of(d, "warning") for d in sorted(warnings)
    ]


def checked_findings(checked: Checked) -> list[Finding]:
    """One manifest's problems: its errors when invalid, its warnings when valid.

    An invalid manifest reports its errors only: the manifest code stops at the first
    step that found errors, and drops the warnings it had found by then.
    """
    if checked.error is not None:
        return findings(checked.error.diagnostics)
    assert checked.manifest is not None
    return findings((), checked.manifest.warnings)


def validation_document(results: Sequence[Checked]) -> dict[str, Any]:
    """``validate --format json``: every manifest's verdict, errors and warnings."""
    manifests = []
    for checked in results:
        found = checked_findings(checked)
        manifests.append(
            {
                "path": checked.path,
                "valid": checked.error is None,
                "models": len(checked.manifest.models) if checked.manifest is not None else None,
                "errors": [f.to_json() for f in found if f.level == "error"],
                "warnings": [f.to_json() for f in found if f.level == "warning"],
            }
        )
    return {
        "format_version": 1,
        "valid": all(checked.error is None for checked in results),
        "manifests": manifests,
    }


def render(results: Sequence[Checked], output_format: str) -> str:
    """``validate --format json|sarif|github``: the document for stdout, secrets masked.

    "" for ``text``: the text verdicts are printed as each manifest is checked.
    """
    if output_format == "text":
        return ""
    if output_format == "sarif":
        from modelsync.formats import sarif

        return sarif.render(results)
    if output_format == "github":
        from modelsync.formats import github

        return github.render_findings(f for checked in results for f in checked_findings(checked))
    return redact(json.dumps(validation_document(results), indent=2, ensure_ascii=False))
