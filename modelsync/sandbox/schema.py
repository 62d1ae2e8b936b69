"""The paths the sandbox serves and the request bodies it accepts.

load_model bodies are checked against the published request description shipped beside
this module (``load_model_request.json``, a JSON Schema, draft 2020-12, with its date and
history). It is deliberately not derived from modelsync's own manifest schema: the sandbox
stands for the service, so that it can catch modelsync sending what the service refuses.

The check is a small reader of that description, not jsonschema: it understands exactly
the keywords the description uses (and refuses to load one that uses more), names every
field in the service's Laravel-style wording, never echoes a value it was sent, and
answers a bad body in microseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

LOAD_MODEL_PATH = "/api/v3/load_model"
# Path -> endpoint name.
ENDPOINTS = {
    LOAD_MODEL_PATH: "load_model",
    "/api/v4/dreambooth/load_model": "load_model",
    "/api/v4/dreambooth/model_list": "model_list",
    "/api/v6/images/model_reload": "model_reload",
    "/api/v4/dreambooth/model_reload": "model_reload",
}
DESCRIPTION_FILE = "load_model_request.json"

# A bad body may name thousands of fields; an answer names this many.
MAX_FIELDS_NAMED = 20
_MAX_NAME = 40

# The keywords the reader applies; any other keyword but an annotation fails the load.
_ROOT_KEYWORDS = {"type", "required", "additionalProperties", "properties"}
_FIELD_KEYWORDS = {"type", "enum", "pattern", "format"}
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}

# RFC 3986: scheme ":" then unreserved, reserved or percent-encoded characters.
_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
)
_NON_BLANK = re.compile(r"\S")

FieldErrors = dict[str, list[str]]


def label(name: str) -> str:
    """A field as the service's messages name it: spaces for underscores."""
    return name.replace("_", " ")


def shown_name(name: str) -> str:
    """A field name a client sent, cut short enough to repeat in an answer."""
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"


@dataclass(frozen=True)
class Field:
    """One property of the description, compiled."""

    name: str
    required: bool
    enum: tuple[str, ...] | None
    pattern: re.Pattern[str] | None
    uri: bool


class RequestDescription:
    """The published load_model request, read from its JSON Schema description."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        _check_keywords(document, _ROOT_KEYWORDS, "the description")
        if document.get("type") != "object" or document.get("additionalProperties") is not False:
            raise ValueError("the description must be a closed object (additionalProperties false)")
        self.document = document
        required = tuple(document.get("required", ()))
        properties: Mapping[str, Any] = document["properties"]
        unknown = set(required) - set(properties)
        if unknown:
            raise ValueError(f"required but not described: {sorted(unknown)}")
        self.fields = tuple(
            _compile(name, spec, name in required) for name, spec in properties.items()
        )
        self.required = required
        self._by_name = {field.name: field for field in self.fields}
        historical: Mapping[str, Mapping[str, Mapping[str, str]]]
        historical = document.get("x-historical-values", {})
        self.historical = historical

    @property
    def names(self) -> tuple[str, ...]:
        """Every field the description lists, in its order."""
        return tuple(field.name for field in self.fields)

    @property
    def enums(self) -> dict[str, tuple[str, ...]]:
        """The enumerated fields and their published values."""
        return {f.name: f.enum for f in self.fields if f.enum is not None}

    @property
    def published_since(self) -> str:
        """The date since which the published schema is unchanged."""
        return str(self.document["x-published"]["unchanged_since"])

    def check(self, body: Mapping[str, Any], *, skip: tuple[str, ...] = ()) -> FieldErrors:
        """The problems of ``body``, by field, every field at once (empty: valid)."""
        errors: FieldErrors = {}
        for field in self.fields:
            if field.name in skip:
                continue
            problem = self._problem(field, body)
            if problem is not None:
                errors[field.name] = [problem]
        for name in body:
            if name not in self._by_name and name not in skip:
                shown = shown_name(str(name))
                errors.setdefault(shown, []).append(f"The {label(shown)} field is not allowed.")
        return errors

    def _problem(self, field: Field, body: Mapping[str, Any]) -> str | None:
        if field.name not in body:
            return f"The {label(field.name)} field is required." if field.required else None
        value = body[field.name]
        if field.required and (value is None or value == ""):
            return f"The {label(field.name)} field is required."
        if not isinstance(value, str):
            return f"The {label(field.name)} field must be a string."
        if field.pattern is not None and not field.pattern.search(value):
            if field.required:
                return f"The {label(field.name)} field is required."
            return f"The {label(field.name)} field format is invalid."
        if field.uri and not _URI.fullmatch(value):
            return f"The {label(field.name)} field must be a valid URI."
        if field.enum is not None and value not in field.enum:
            return self._enum_problem(field.name, field.enum, value)
        return None

    def _enum_problem(self, name: str, enum: tuple[str, ...], value: str) -> str:
        message = f"The selected {label(name)} is invalid"
        past = self.historical.get(name, {}).get(value)
        if past is not None:
            # A value from our own list: safe to repeat.
            return (
                f"{message}: '{value}' is not in the published schema (unchanged since "
                f"{self.published_since}); it was listed {past['listed']}; {past['migration']}."
            )
        return f"{message} (one of: {', '.join(enum)})."


def _check_keywords(spec: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = {k for k in spec if k not in known and k not in _ANNOTATIONS and not k.startswith("x-")}
    if extra:
        raise ValueError(f"{where} uses keywords the sandbox does not apply: {sorted(extra)}")


def _compile(name: str, spec: Mapping[str, Any], required: bool) -> Field:
    _check_keywords(spec, _FIELD_KEYWORDS, f"property {name!r}")
    if spec.get("type") != "string":
        raise ValueError(f"property {name!r}: the sandbox reads string properties only")
    fmt = spec.get("format")
    if fmt not in (None, "uri"):
        raise ValueError(f"property {name!r}: format {fmt!r} is not checked by the sandbox")
    enum = spec.get("enum")
    pattern = spec.get("pattern")
    return Field(
        name=name,
        required=required,
        enum=tuple(enum) if enum is not None else None,
        pattern=re.compile(pattern) if pattern is not None else None,
        uri=fmt == "uri",
    )


def description_text() -> str:
    """The description as shipped in the package."""
    return resources.files("modelsync.sandbox").joinpath(DESCRIPTION_FILE).read_text("utf-8")


@cache
def published_request() -> RequestDescription:
    """The published load_model request description (read once)."""
    return RequestDescription(json.loads(description_text()))


def check_reload(body: Mapping[str, Any]) -> FieldErrors:
    """The problems of a model_reload body: ``model_id``, a non-blank string, is required."""
    value = body.get("model_id")
    if not isinstance(value, str) or not _NON_BLANK.search(value):
        if isinstance(value, str) or value is None:
            return {"model_id": ["The model id field is required."]}
        return {"model_id": ["The model id field must be a string."]}
    return {}
