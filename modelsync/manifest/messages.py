"""Diagnostics in plain words: the reporter, and jsonschema's errors turned into messages.

Every message names the place (``models[3] (id 'x'): url``), what is wrong and the fix,
with a "did you mean" for near misses (STYLE habit 3). jsonschema's own texts never
reach the user: they echo values and speak of schemas.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modelsync.defaults import DEFAULT_API_KEY_ENV, DEFAULT_ENDPOINT
from modelsync.errors import Diagnostic, ManifestError
from modelsync.yamlio import LoadedYaml, describe_yaml_type

_YES_NO_FIELDS = ("force_load", "hf_upload")
_REPO_ID_RULES = (
    "'namespace/name' with ASCII letters, digits, '-', '_', '.'; each part 1-96 characters, "
    "no leading or trailing '-' or '.', no '--' or '..', not ending in '.git'"
)
_KEY_FIELDS = ("key", "api_key", "apikey")


class _Reporter:
    """Collects diagnostics (errors) and warnings, naming models by index and id.

    With ``strict`` (``--strict``), every warning is an error, saying so.
    """

    def __init__(self, loaded: LoadedYaml, *, strict: bool = False) -> None:
        self.loaded = loaded
        self.strict = strict
        self.diagnostics: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()

    def _append(self, diagnostic: Diagnostic) -> None:
        # jsonschema gives one "required" error per missing field, each naming them all:
        # the same problem must be shown once.
        if diagnostic not in self._seen:
            self._seen.add(diagnostic)
            self.diagnostics.append(diagnostic)

    def where(self, path: Sequence[str | int]) -> str:
        data = self.loaded.data
        parts: list[str] = []
        i = 0
        if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
            index = path[1]
            label = f"models[{index}]"
            models = data.get("models") if isinstance(data, dict) else None
            if isinstance(models, list) and index < len(models) and isinstance(models[index], dict):
                model_id = models[index].get("model_id")
                if isinstance(model_id, str) and type(model_id) is str:
                    label += f" (id {model_id!r})"
            parts.append(label)
            i = 2
        rest = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path[i:])
        rest = rest.replace(".[", "[")
        if rest:
            parts.append(rest)
        return ": ".join(parts)

    def add(
        self,
        path: Sequence[str | int],
        message: str,
        *,
        position_path: Sequence[str | int] | None = None,
        of_key: bool = True,
    ) -> None:
        pos = self.loaded.position(
            position_path if position_path is not None else path, of_key=of_key
        )
        where = self.where(path)
        text = f"{where}: {message}" if where else message
        self._append(Diagnostic(self.loaded.path, pos.line, pos.column, text))

    def add_at(self, line: int, column: int, path: Sequence[str | int], message: str) -> None:
        where = self.where(path)
        text = f"{where}: {message}" if where else message
        self._append(Diagnostic(self.loaded.path, line, column, text))

    def warn(self, path: Sequence[str | int], message: str) -> None:
        """Something suspicious that may work: a warning, or an error with --strict."""
        if self.strict:
            self.add(path, f"{message} (an error because of --strict)")
            return
        pos = self.loaded.position(path)
        text = f"{self.where(path)}: warning: {message}"
        self.warnings.append(Diagnostic(self.loaded.path, pos.line, pos.column, text))

    def fail_if_any(self) -> None:
        if self.diagnostics:
            raise ManifestError(self.diagnostics)


# --------------------------------------------------------------------------- pasted body


def _report_pasted_body(
    report: _Reporter, data: dict[str, Any], model_fields: Iterable[str]
) -> bool:
    """A load_model request body pasted as the manifest: one error saying where models go.

    Without it, each of its fields is an "unknown key" and 'models:' is "missing": many
    errors, none of which says what to do. True when reported.
    """
    known = set(model_fields)
    fields = [k for k in data if isinstance(k, str) and k in known]
    if "models" in data or not {"model_id", "url"} & set(fields):
        return False
    model_id = data.get("model_id")
    shown_id = model_id if isinstance(model_id, str) and _PLAIN_ID.fullmatch(model_id) else "..."
    example = ["  version: 1", "  models:", f"    - model_id: {shown_id}"]
    example += [f"      {name}: ..." for name in fields if name != "model_id"]
    key = [k for k in _KEY_FIELDS if k in data]
    drop_key = (
        f" (leave out {key[0]!r}: the API key goes in the environment variable "
        f"{_key_env(data)} or --api-key-file, never in the manifest)"
        if key
        else ""
    )
    pos = report.loaded.position((fields[0],))
    report.add_at(
        pos.line,
        pos.column,
        (),
        "this is a load_model request body, not a manifest: put each model under "
        f"'models:', like this{drop_key}:\n" + "\n".join(example),
    )
    return True


_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# --------------------------------------------------------------------------- schema errors


@dataclass(frozen=True)
class _Failure:
    """One jsonschema error, with what every handler needs to word it."""

    error: Any
    data: Any  # the whole document
    path: tuple[str | int, ...]
    value: Any
    field_name: str | None

    @classmethod
    def of(cls, error: Any, data: Any, path: tuple[str | int, ...]) -> _Failure:
        field_name = path[-1] if path and isinstance(path[-1], str) else None
        return cls(error, data, path, error.instance, field_name)

    @property
    def in_model(self) -> bool:
        return len(self.path) >= 2 and self.path[0] == "models"


def _report_schema_error(
    report: _Reporter, data: Any, error: Any, path: tuple[str | int, ...]
) -> None:
    """Report one jsonschema error at ``path`` (in ``data``) in plain words, by its keyword."""
    handler = _HANDLERS.get(error.validator, _on_other)
    handler(report, _Failure.of(error, data, path))


def _on_additional_properties(report: _Reporter, failure: _Failure) -> None:
    allowed = _allowed_properties(failure.error)
    value = failure.value
    unknown = [k for k in value if k not in allowed] if isinstance(value, dict) else []
    for key in unknown:
        key_text = str(key)
        if key_text in _KEY_FIELDS:
            message = _key_in_manifest_message(failure.data)
        else:
            hint = _did_you_mean(key_text, allowed)
            message = f"unknown key {key_text!r}{hint}; allowed here: {', '.join(allowed)}"
        report.add((*failure.path, key_text), message)


def _key_env(data: Any) -> str:
    """The variable the API key is read from: target.api_key_env, else the default."""
    target = data.get("target") if isinstance(data, dict) else None
    if isinstance(target, dict) and isinstance(target.get("api_key_env"), str):
        return str(target["api_key_env"])
    return DEFAULT_API_KEY_ENV


def _key_in_manifest_message(data: Any) -> str:
    return (
        "the API key must not be in the manifest: it is a secret; "
        f"put it in the environment variable {_key_env(data)} "
        "(or pass --api-key-file) and remove this line"
    )


def _on_required(report: _Reporter, failure: _Failure) -> None:
    error, value = failure.error, failure.value
    missing = [r for r in error.validator_value if not isinstance(value, dict) or r not in value]
    for name in missing:
        if name == "models":
            fix = "add 'models:' with a list of models"
        elif name == "version":
            fix = "add 'version: 1' at the top"
        else:
            choices = _current_values(error.schema.get("properties", {}).get(name, {}))
            fix = f"add '{name}:'"
            if choices:
                fix += " with one of " + ", ".join(repr(c) for c in choices)
        report.add(failure.path, f"missing required field {name!r}; {fix}", of_key=False)


def _on_type(report: _Reporter, failure: _Failure) -> None:
    path, value = failure.path, failure.value
    expected = failure.error.validator_value
    if expected == "string" and value is None:
        report.add(path, "is empty; give it a value")
    elif expected == "string" and not isinstance(value, (dict, list)):
        literal = _yaml_literal(report, path, value)
        shown = f"{failure.field_name}: " if failure.field_name else ""
        report.add(
            path,
            f"{literal} is read by YAML as {describe_yaml_type(value)}, not text; "
            f'quote it: {shown}"{literal}"',
        )
    else:
        report.add(path, f"{_type_wanted(path, expected)}, not {describe_yaml_type(value)}")


def _on_enum(report: _Reporter, failure: _Failure) -> None:
    path, value = failure.path, failure.value
    given = _shown_value(report, path, value)
    if failure.field_name in _YES_NO_FIELDS:
        report.add(path, f"{given} is not yes or no; write yes or no")
        return
    _report_choices(report, failure, [str(c) for c in failure.error.validator_value])


def _on_any_of(report: _Reporter, failure: _Failure) -> None:
    # model_category: the current values, or one of the deprecated ones (which the checks
    # warn about). The message offers the current values only.
    if not _reported_form(report, failure):
        _report_choices(report, failure, _current_values(failure.error.schema))


def _report_choices(report: _Reporter, failure: _Failure, choices: list[str]) -> None:
    path, value = failure.path, failure.value
    given = _shown_value(report, path, value)
    hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
    if failure.field_name == "model_subcategory" and choices == ["lora"]:
        report.add(
            path,
            f"{given} is not a subcategory the API publishes, only 'lora' is{hint}; "
            "for a model that is not a LoRA, remove the line",
        )
        return
    shown = ", ".join(repr(c) for c in choices)
    report.add(path, f"{given} is not one of {shown}{hint}")


def _on_const(report: _Reporter, failure: _Failure) -> None:
    path, value = failure.path, failure.value
    if path != ("version",):
        _on_other(report, failure)
    elif isinstance(value, str) and value.strip() == "1":
        report.add(path, f"version is the text {value!r}; write the number: version: 1")
    else:
        shown = _shown_value(report, path, value)
        report.add(path, f"version {shown} is not supported; this modelsync reads version: 1")


def _on_not(report: _Reporter, failure: _Failure) -> None:
    # `not: {pattern: ...}` fails for anything that is not text: the "type" error of
    # the same value already says what is wrong, in better words.
    if type(failure.value) is str:
        _on_pattern(report, failure)


def _on_pattern(report: _Reporter, failure: _Failure) -> None:
    if not _reported_form(report, failure):
        report.add(failure.path, _pattern_message(failure.field_name, failure.value))


def _on_length(report: _Reporter, failure: _Failure) -> None:
    if _reported_form(report, failure):
        return
    if failure.error.validator == "maxLength":
        limit = failure.error.validator_value
        report.add(
            failure.path, f"is {len(failure.value)} characters long, more than {limit}; shorten it"
        )
    else:
        report.add(failure.path, "must not be empty; give it a value or remove the line")


def _on_other(report: _Reporter, failure: _Failure) -> None:  # pragma: no cover
    # Every keyword of the schema has its handler above; a new one still gets a message.
    if not _reported_form(report, failure):
        report.add(failure.path, str(failure.error.message))


def _reported_form(report: _Reporter, failure: _Failure) -> bool:
    """Report a url or label name of the wrong form, whichever keyword caught it."""
    path, value = failure.path, failure.value
    if failure.field_name == "url" and failure.in_model:
        report.add(path, _url_message(report, path, value))
        return True
    if "propertyNames" in failure.error.schema_path:
        report.add(
            path,
            f"label name {value!r} is not allowed: use letters, digits, '.', '_', '-', '/' "
            "(at most 63 characters, starting with a letter or digit)",
            position_path=(*path, value),
        )
        return True
    return False


_HANDLERS: dict[str, Callable[[_Reporter, _Failure], None]] = {
    "additionalProperties": _on_additional_properties,
    "required": _on_required,
    "type": _on_type,
    "enum": _on_enum,
    "anyOf": _on_any_of,
    "const": _on_const,
    "not": _on_not,
    "pattern": _on_pattern,
    "maxLength": _on_length,
    "minLength": _on_length,
}


# --------------------------------------------------------------------------- wording


def _allowed_properties(error: Any) -> list[str]:
    props = error.schema.get("properties", {})
    return list(props)


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    return _closest(value, tuple(choices))


@functools.lru_cache(maxsize=4096)
def _closest(value: str, choices: tuple[str, ...]) -> str:
    # Cached: a manifest repeats its mistakes (100,000 models, one typo), difflib is slow.
    import difflib  # only a manifest with a mistake needs it

    # Case aside: 'LoRA' and 'Private' are near misses of 'lora' and 'private'.
    folded = {choice.casefold(): choice for choice in choices}
    match = difflib.get_close_matches(value.casefold(), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[match[0]]!r}?)" if match else ""


def _current_values(sub: Any) -> list[str]:
    """The values a field's subschema offers: its enum, or its anyOf's not deprecated."""
    if not isinstance(sub, dict):
        return []
    if "enum" in sub:
        return [str(v) for v in sub["enum"]]
    values: list[str] = []
    for branch in sub.get("anyOf", ()):
        if not branch.get("deprecated"):
            values += [str(v) for v in branch.get("enum", [branch.get("const")]) if v is not None]
    return values


def _yaml_literal(report: _Reporter, path: Sequence[str | int], value: Any) -> str:
    text = report.loaded.source_text(path)
    return text if text is not None else json.dumps(value, default=str)


def _shown_value(report: _Reporter, path: Sequence[str | int], value: Any) -> str:
    """A value as the user wrote it: text quoted, anything else as in the file."""
    if isinstance(value, str) and type(value) is str:
        return repr(value)
    if value is None:
        return "an empty value"
    return _yaml_literal(report, path, value)


def _type_wanted(path: Sequence[str | int], expected: str) -> str:
    """What a list or mapping should look like, for a type error at ``path``."""
    if path == ("models",):
        return "must be a list of models, each starting with '- model_id: ...'"
    if len(path) == 2 and path[0] == "models":
        return (
            "a model must be a mapping of its fields (model_id, url, model_format, "
            "model_category...)"
        )
    if path and path[-1] == "labels":
        return "must be a mapping of label names to text, like labels: {team: portraits}"
    if expected == "object":
        return "must be a mapping of 'name: value' lines"
    words = {"array": "a list", "string": "text"}
    return f"must be {words.get(expected, expected)}"


def _model_format(report: _Reporter, path: Sequence[str | int]) -> Any:
    data = report.loaded.data
    try:
        return data["models"][path[1]].get("model_format")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _url_message(report: _Reporter, path: Sequence[str | int], value: str) -> str:
    fmt = _model_format(report, path)
    if fmt == "diffusers":
        match = re.match(r"https?://(?:www\.)?huggingface\.co/([^/\s]+/[^/\s?#]+)", value)
        if match:
            return (
                f"with model_format diffusers, url is a Hugging Face repo id, not a link: "
                f"write url: {match.group(1)}"
            )
        if "://" in value:
            return (
                "with model_format diffusers, url must be a Hugging Face repo id like "
                "'org/name', not a link; for a single .safetensors/.ckpt file use "
                "model_format: safetensors or ckpt"
            )
        return f"{value!r} is not a valid Hugging Face repo id: {_REPO_ID_RULES}"
    if len(value) > 2048:
        return (
            f"is {len(value)} characters long, more than the 2048 the service accepts; "
            "use a shorter link (drop tracking parameters)"
        )
    scheme_match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if scheme_match and scheme_match.group(1).lower() not in ("http", "https"):
        return (
            f"the {scheme_match.group(1)}:// scheme is not supported: the service downloads "
            "over https; use an https:// link"
        )
    if re.search(r"\s", value):
        return "contains whitespace; percent-encode spaces as %20"
    file_name = re.search(r"\.(safetensors|ckpt)$", value, re.IGNORECASE)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not file_name:
        return (
            f"with model_format {fmt}, url must be an https:// link to the file; {value!r} is "
            f"not a valid Hugging Face repo id either: {_REPO_ID_RULES}"
        )
    return f"with model_format {fmt}, url must be an https:// link to the file"


def _pattern_message(field_name: str | None, value: Any) -> str:
    if field_name == "model_id":
        return (
            f"{value!r} is not a valid model_id: 1-100 characters, letters, digits, '.', "
            "'_', '-', starting with a letter or digit"
        )
    if field_name == "model_image":
        return f"{value!r} must be an http(s):// URL without whitespace"
    if field_name == "endpoint":
        return f"{value!r} must be an http(s):// URL, like {DEFAULT_ENDPOINT}"
    if field_name == "api_key_env":
        return (
            f"{value!r} is not an environment variable name: use letters, digits and '_', "
            f"like {DEFAULT_API_KEY_ENV}"
        )
    return f"{value!r} does not have the expected form"  # pragma: no cover
