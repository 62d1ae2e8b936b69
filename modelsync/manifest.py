"""load_manifest(path) -> Manifest: file -> YAML -> schema -> checks -> secrets -> records.

The fixed pipeline of DESIGN §1. Every step reports all of its problems at once as
``Diagnostic`` values (``file:line:col``, the model, what is wrong and the fix), and
the pipeline stops after the first step that found any: later steps would only
repeat them in worse words. Raw dicts stay inside this module; callers get frozen
:class:`ModelSpec` records.
"""

from __future__ import annotations

import difflib
import gc
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelsync import redact
from modelsync.defaults import DEFAULT_API_KEY_ENV, DEFAULT_ENDPOINT
from modelsync.errors import Diagnostic, ManifestError
from modelsync.records import ModelSpec
from modelsync.yamlio import LoadedYaml, YamlDate, describe_yaml_type, load_yaml_file

INTERPOLATED_FIELDS = ("url", "model_image")
_YES_NO_FIELDS = ("force_load", "hf_upload")
_BUILTIN_DEFAULTS = {"revision": "fp16", "model_visibility": "private", "hf_upload": "no"}
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
# A cheap filter before parsing a URL: only these can be one of the mistakes below.
_SUSPECT_URL = re.compile(r"civitai\.com/models/|/blob/|^http:", re.IGNORECASE)
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Manifest:
    """A valid manifest: its target and its models, in file order."""

    path: str
    endpoint: str | None
    api_key_env: str
    models: tuple[ModelSpec, ...]
    warnings: tuple[Diagnostic, ...] = ()

    def model(self, model_id: str) -> ModelSpec | None:
        """The model with this id, if the manifest has it."""
        for spec in self.models:
            if spec.model_id == model_id:
                return spec
        return None


# --------------------------------------------------------------------------- schema


@cache
def schema() -> dict[str, Any]:
    """The manifest JSON Schema shipped in the package (the one source of truth)."""
    text = resources.files("modelsync").joinpath("schemas/manifest.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def schema_text() -> str:
    """The schema as shipped, for ``modelsync schema``."""
    return resources.files("modelsync").joinpath("schemas/manifest.schema.json").read_text("utf-8")


@cache
def _validator() -> Any:
    import jsonschema

    base = jsonschema.Draft202012Validator
    # A date YAML typed is kept as text (YamlDate) but is not a string to the schema,
    # so that "model_id: 2024-01-01" is reported with "quote it".
    checker = base.TYPE_CHECKER.redefine(
        "string", lambda _checker, value: isinstance(value, str) and type(value) is not YamlDate
    )
    validator_class = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base, type_checker=checker
    )
    return validator_class(schema())


class _FastModelCheck:
    """A conservative fast path for the happy case, compiled from the schema itself.

    jsonschema costs about 150 µs per model; a 10,000-model manifest must validate
    in well under a second. This checks each model against predicates compiled from
    the model subschema (types, patterns, enums, lengths, required, the url if/then).
    It only ever says "certainly valid": on any doubt the caller runs jsonschema on
    the whole document, which also produces the error messages.
    """

    def __init__(self, root: Mapping[str, Any]) -> None:
        model = root["$defs"]["model"]
        defs = root["$defs"]
        self.required = frozenset(model["required"])
        self.props: dict[str, Callable[[Any], bool]] = {
            name: self._compile(sub, defs) for name, sub in model["properties"].items()
        }
        cond = model["if"]
        self.if_field = next(iter(cond["properties"]))
        self.if_value = cond["properties"][self.if_field]["const"]
        self.then_url = self._compile(model["then"]["properties"]["url"], defs)
        self.else_url = self._compile(model["else"]["properties"]["url"], defs)
        if (
            set(model)
            - {
                "description",
                "type",
                "additionalProperties",
                "required",
                "properties",
                "if",
                "then",
                "else",
            }
            or model.get("additionalProperties") is not False
        ):
            raise ValueError("the fast path does not know this model schema")
        # The document around the models (version, target, defaults), so that a valid
        # manifest never needs jsonschema: importing and building it is a quarter second.
        self.head = self._compile_object(root, defs, skip="models")

    def _compile_object(
        self, sub: Mapping[str, Any], defs: Mapping[str, Any], *, skip: str = ""
    ) -> Callable[[Any], bool]:
        """A closed mapping with named properties; ``skip`` names one checked elsewhere."""
        known = {"$schema", "$id", "$defs", "title", "description", "type", "required"}
        known |= {"additionalProperties", "properties"}
        if (
            set(sub) - known
            or sub.get("type") != "object"
            or sub.get("additionalProperties") is not False
        ):
            return _never
        required = frozenset(sub.get("required", ()))
        props: dict[str, Callable[[Any], bool]] = {}
        for name, prop in sub.get("properties", {}).items():
            if name == skip:
                props[name] = _always
            elif "properties" in prop:
                props[name] = self._compile_object(prop, defs)
            else:
                props[name] = self._compile(prop, defs)

        def closed_mapping(v: Any) -> bool:
            if type(v) is not dict or not required.issubset(v):
                return False
            for key, value in v.items():
                check = props.get(key)
                if check is None or not check(value):
                    return False
            return True

        return closed_mapping

    def _compile(self, sub: Mapping[str, Any], defs: Mapping[str, Any]) -> Callable[[Any], bool]:
        if "$ref" in sub:
            sub = defs[sub["$ref"].rsplit("/", 1)[-1]]
        checks: list[Callable[[Any], bool]] = []
        for key, value in sub.items():
            if key == "description":
                continue
            check = _keyword_check(key, value)
            if check is None:
                return _never  # a keyword the fast path does not know: defer to jsonschema
            checks.append(check)

        def all_checks(v: Any) -> bool:
            return all(check(v) for check in checks)

        return all_checks

    def __call__(self, model: Any) -> bool:
        if type(model) is not dict or not self.required.issubset(model):
            return False
        props = self.props
        for key, value in model.items():
            check = props.get(key)
            if check is None or not check(value):
                return False
        url_check = self.then_url if model[self.if_field] == self.if_value else self.else_url
        return url_check(model["url"])


def _never(_value: Any) -> bool:
    return False


def _always(_value: Any) -> bool:
    return True


def _keyword_check(key: str, value: Any) -> Callable[[Any], bool] | None:
    """A predicate for one schema keyword, exact where jsonschema is exact; None if unknown."""
    if key == "type" and value in ("string", "object"):
        wanted: type = str if value == "string" else dict

        def is_type(v: Any) -> bool:
            return type(v) is wanted

        return is_type
    if key == "pattern":
        rx = re.compile(value)

        def matches(v: Any) -> bool:
            return type(v) is not str or rx.search(v) is not None

        return matches
    if key == "not" and isinstance(value, dict) and set(value) == {"pattern"}:
        not_rx = re.compile(value["pattern"])

        def does_not_match(v: Any) -> bool:
            return type(v) is str and not_rx.search(v) is None

        return does_not_match
    if key == "const":
        # Exact type too: jsonschema also takes 1.0 for 1, which jsonschema then judges.
        def is_const(v: Any) -> bool:
            return type(v) is type(value) and v == value

        return is_const
    if key == "enum":
        # (type, value) pairs: jsonschema does not take True for 1, nor a YamlDate for text.
        allowed = {(type(e), e) for e in value}

        def in_enum(v: Any) -> bool:
            try:
                return (type(v), v) in allowed
            except TypeError:  # unhashable
                return False

        return in_enum
    if key in ("maxLength", "minLength"):
        limit = int(value)
        longest = key == "maxLength"

        def length_ok(v: Any) -> bool:
            if type(v) is not str:
                return True
            return len(v) <= limit if longest else len(v) >= limit

        return length_ok
    if key == "additionalProperties" and value == {"type": "string"}:

        def string_values(v: Any) -> bool:
            return type(v) is not dict or all(type(x) is str for x in v.values())

        return string_values
    if key == "propertyNames" and isinstance(value, dict) and set(value) == {"pattern"}:
        name_rx = re.compile(value["pattern"])

        def names_ok(v: Any) -> bool:
            return type(v) is not dict or all(
                type(k) is str and name_rx.search(k) is not None for k in v
            )

        return names_ok
    return None


@cache
def _fast_check() -> _FastModelCheck:
    return _FastModelCheck(schema())


def _schema_errors(data: Any) -> Iterator[Any]:
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        fast = _fast_check()
        if fast.head(data) and all(fast(m) for m in data["models"]):
            return iter(())
    errors: Iterator[Any] = _validator().iter_errors(data)
    return errors


# --------------------------------------------------------------------------- loading


class _Reporter:
    """Collects diagnostics, naming models by index and id."""

    def __init__(self, loaded: LoadedYaml) -> None:
        self.loaded = loaded
        self.diagnostics: list[Diagnostic] = []
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

    def fail_if_any(self) -> None:
        if self.diagnostics:
            raise ManifestError(self.diagnostics)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (nestable; as a decorator, for each call).

    Loading a 10,000-model manifest builds ~500,000 objects (YAML nodes and marks, dicts)
    that all stay alive until the load ends, and no garbage cycles: each pass of the
    collector walks all of them again, which doubled the load time (DESIGN §7).
    Reference counting frees everything as usual meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:  # only the outermost pause turns it back on
            gc.enable()


@_gc_paused()
def load_manifest(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Manifest:
    """Run the whole pipeline on ``path``; raise ManifestError with every problem found."""
    env = os.environ if env is None else env
    loaded = load_yaml_file(Path(path))
    report = _Reporter(loaded)
    for problem in loaded.problems:
        report.add_at(problem.line, problem.column, problem.path, problem.message)

    data = loaded.data
    if not isinstance(data, dict):
        report.add(
            (),
            f"the manifest must be a mapping with 'version: 1' and 'models:', "
            f"not {describe_yaml_type(data)}",
            of_key=False,
        )
        report.fail_if_any()

    # Schema errors and the checks beyond the schema are reported together, so a user
    # fixes everything in one round: the checks run on every model the schema accepted.
    broken: set[int] = set()
    whole_document = False
    for error in _schema_errors(data):
        _report_schema_error(report, data, error)
        where = tuple(error.absolute_path)
        if len(where) >= 2 and where[0] == "models" and isinstance(where[1], int):
            broken.add(where[1])
        elif where in ((), ("models",)):
            whole_document = True
    if not whole_document:
        warnings = _check_semantics(report, data, broken)
    report.fail_if_any()

    resolved = _interpolate(report, data, env)
    report.fail_if_any()

    return _build(loaded.path, data, resolved, loaded, tuple(warnings))


# --------------------------------------------------------------------------- schema messages

_TOP_FIELDS = ("version", "target", "defaults", "models")


def _allowed_properties(error: Any) -> list[str]:
    props = error.schema.get("properties", {})
    return list(props)


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


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


def _report_schema_error(report: _Reporter, data: Any, error: Any) -> None:
    path = tuple(error.absolute_path)
    validator = error.validator
    value = error.instance
    field_name = path[-1] if path and isinstance(path[-1], str) else None
    in_model = len(path) >= 2 and path[0] == "models"

    if validator == "additionalProperties":
        allowed = _allowed_properties(error)
        unknown = [k for k in value if k not in allowed] if isinstance(value, dict) else []
        for key in unknown:
            key_text = str(key)
            if key_text in ("key", "api_key", "apikey"):
                env_name = DEFAULT_API_KEY_ENV
                target = data.get("target") if isinstance(data, dict) else None
                if isinstance(target, dict) and isinstance(target.get("api_key_env"), str):
                    env_name = target["api_key_env"]
                message = (
                    "the API key must not be in the manifest: it is a secret; "
                    f"put it in the environment variable {env_name} "
                    "(or pass --api-key-file) and remove this line"
                )
            else:
                hint = _did_you_mean(key_text, allowed)
                message = f"unknown key {key_text!r}{hint}; allowed here: {', '.join(allowed)}"
            report.add((*path, key_text), message)
        return

    if validator == "required":
        missing = [
            r for r in error.validator_value if not isinstance(value, dict) or r not in value
        ]
        for name in missing:
            if name == "models":
                fix = "add 'models:' with a list of models"
            elif name == "version":
                fix = "add 'version: 1' at the top"
            else:
                choices = error.schema.get("properties", {}).get(name, {}).get("enum")
                fix = f"add '{name}:'"
                if choices:
                    fix += " with one of " + ", ".join(repr(c) for c in choices)
            report.add(path, f"missing required field {name!r}; {fix}", of_key=False)
        return

    if validator == "type":
        expected = error.validator_value
        if expected == "string" and value is None:
            report.add(path, "is empty; give it a value")
        elif expected == "string" and not isinstance(value, (dict, list)):
            literal = _yaml_literal(report, path, value)
            shown = f"{field_name}: " if field_name else ""
            report.add(
                path,
                f"{literal} is read by YAML as {describe_yaml_type(value)}, not text; "
                f'quote it: {shown}"{literal}"',
            )
        else:
            report.add(path, f"{_type_wanted(path, expected)}, not {describe_yaml_type(value)}")
        return

    if validator == "enum":
        choices = error.validator_value
        given = _shown_value(report, path, value)
        if field_name in _YES_NO_FIELDS:
            report.add(path, f"{given} is not yes or no; write yes or no")
            return
        shown = ", ".join(repr(c) for c in choices)
        hint = _did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        report.add(path, f"{given} is not one of {shown}{hint}")
        return

    if validator == "const" and path == ("version",):
        if isinstance(value, str) and value.strip() == "1":
            report.add(path, f"version is the text {value!r}; write the number: version: 1")
        else:
            shown = _shown_value(report, path, value)
            report.add(path, f"version {shown} is not supported; this modelsync reads version: 1")
        return

    if validator == "not" and type(value) is not str:
        # `not: {pattern: ...}` fails for anything that is not text: the "type" error of
        # the same value already says what is wrong, in better words.
        return

    if field_name == "url" and in_model:
        report.add(path, _url_message(report, path, value))
        return

    if "propertyNames" in error.schema_path:
        report.add(
            path,
            f"label name {value!r} is not allowed: use letters, digits, '.', '_', '-', '/' "
            "(at most 63 characters, starting with a letter or digit)",
            position_path=(*path, value),
        )
        return

    if validator == "pattern" or validator == "not":
        report.add(path, _pattern_message(field_name, value, path))
        return

    if validator in ("maxLength", "minLength"):
        limit = error.validator_value
        if validator == "maxLength":
            report.add(path, f"is {len(value)} characters long, more than {limit}; shorten it")
        else:
            report.add(path, "must not be empty; give it a value or remove the line")
        return

    report.add(path, str(error.message))  # pragma: no cover - every keyword above is handled


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
        return (
            f"{value!r} is not a valid Hugging Face repo id: 'namespace/name' with ASCII "
            "letters, digits, '-', '_', '.'; each part 1-96 characters, no leading or trailing "
            "'-' or '.', no '--' or '..', not ending in '.git'"
        )
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
    if re.fullmatch(r"[\w.-]+/[\w.-]+", value):
        return (
            f"with model_format {fmt}, url must be an https:// link; {value!r} looks like a "
            "Hugging Face repo id: use model_format: diffusers, or link the file as "
            f"https://huggingface.co/{value}/resolve/main/<file>.safetensors"
        )
    return f"with model_format {fmt}, url must be an https:// link to the file"


def _pattern_message(field_name: str | None, value: Any, path: Sequence[str | int]) -> str:
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


# --------------------------------------------------------------------------- checks


def _check_semantics(report: _Reporter, data: dict[str, Any], broken: set[int]) -> list[Diagnostic]:
    """Step 4: what the schema cannot say. Returns warnings; errors go to the report."""
    warnings: list[Diagnostic] = []
    first_seen: dict[str, int] = {}
    for index, model in enumerate(data["models"]):
        path = ("models", index)
        model_id = model.get("model_id") if isinstance(model, dict) else None
        if type(model_id) is str:
            if model_id in first_seen:
                first = first_seen[model_id]
                first_line = report.loaded.position(("models", first, "model_id")).line
                report.add(
                    (*path, "model_id"),
                    f"duplicate model_id {model_id!r} (first at line {first_line}); "
                    "each model_id names one model on the account: rename or remove one",
                )
            else:
                first_seen[model_id] = index
        if index in broken:
            continue
        url = model["url"]
        if model["model_format"] == "diffusers" or not _SUSPECT_URL.search(url):
            continue
        parsed = urllib.parse.urlsplit(url)
        host = (parsed.hostname or "").lower()
        if host in ("civitai.com", "www.civitai.com") and re.match(r"/models/\d+", parsed.path):
            report.add(
                (*path, "url"),
                "this is a Civitai model page, not a download link; use "
                "https://civitai.com/api/download/models/<versionId> (the link of the page's "
                "Download button)",
            )
        elif host in ("huggingface.co", "www.huggingface.co") and "/blob/" in parsed.path:
            fixed = url.replace("/blob/", "/resolve/", 1)
            report.add(
                (*path, "url"),
                f"a Hugging Face /blob/ link is the HTML page, not the file; use /resolve/: "
                f"{fixed}",
            )
        elif parsed.scheme == "http":
            pos = report.loaded.position((*path, "url"))
            warnings.append(
                Diagnostic(
                    report.loaded.path,
                    pos.line,
                    pos.column,
                    f"{report.where((*path, 'url'))}: warning: http:// link; prefer https://",
                )
            )
    return warnings


def _interpolate(
    report: _Reporter, data: dict[str, Any], env: Mapping[str, str]
) -> list[dict[str, str]]:
    """Step 5: ${VAR} in url and model_image; every value used is a secret."""
    resolved: list[dict[str, str]] = []
    for index, model in enumerate(data["models"]):
        values: dict[str, str] = {}
        for name in INTERPOLATED_FIELDS:
            text = model.get(name)
            if not isinstance(text, str) or "$" not in text:
                continue
            result = _substitute(report, ("models", index, name), text, env)
            if result is not None and result != text:
                values[name] = result
        resolved.append(values)
    return resolved


def _substitute(
    report: _Reporter, path: tuple[str | int, ...], text: str, env: Mapping[str, str]
) -> str | None:
    ok = True

    def replace(match: re.Match[str]) -> str:
        nonlocal ok
        if match.group(0) == "$${":
            return "${"
        token = match.group(0)
        name = match.group(1)
        if not token.endswith("}"):
            report.add(path, "'${' without a closing '}'; write ${NAME}, or $${ for a literal ${")
            ok = False
            return token
        if not _VAR_NAME.match(name):
            report.add(
                path,
                f"${{{name}}} is not a variable name: use letters, digits and '_' "
                "(not starting with a digit), or $${ for a literal ${",
            )
            ok = False
            return token
        value = env.get(name)
        if value is None:
            report.add(
                path,
                f"environment variable {name} is not set; set it (export {name}=...) "
                "or remove ${" + name + "} from the " + str(path[-1]),
            )
            ok = False
            return token
        if value == "":
            report.add(
                path,
                f"environment variable {name} is set but empty (a CI secret that is not "
                "configured?); give it its value",
            )
            ok = False
            return token
        redact.register_secret(value)
        return value

    result = _VAR.sub(replace, text)
    return result if ok else None


# --------------------------------------------------------------------------- records


def _yes_no(value: Any) -> str:
    if value is True or value == "yes":
        return "yes"
    return "no"


def _build(
    path: str,
    data: dict[str, Any],
    resolved: list[dict[str, str]],
    loaded: LoadedYaml,
    warnings: tuple[Diagnostic, ...],
) -> Manifest:
    target = data.get("target") or {}
    defaults = data.get("defaults") or {}
    default_labels = defaults.get("labels") or {}
    specs: list[ModelSpec] = []
    for index, model in enumerate(data["models"]):
        merged = {**_BUILTIN_DEFAULTS, **defaults, **model}
        force_load = merged.get("force_load")
        labels = {**default_labels, **(model.get("labels") or {})}
        specs.append(
            ModelSpec(
                model_id=model["model_id"],
                url=model["url"],
                model_format=model["model_format"],
                model_category=model["model_category"],
                model_name=model.get("model_name", model["model_id"]),
                revision=merged["revision"],
                model_visibility=merged["model_visibility"],
                hf_upload=_yes_no(merged["hf_upload"]),
                force_load=None if force_load is None else _yes_no(force_load),
                model_subcategory=merged.get("model_subcategory"),
                model_image=model.get("model_image"),
                labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
                index=index,
                line=loaded.position(("models", index), of_key=False).line,
                resolved=MappingProxyType(resolved[index]),
            )
        )
    return Manifest(
        path=path,
        endpoint=target.get("endpoint"),
        api_key_env=target.get("api_key_env", DEFAULT_API_KEY_ENV),
        models=tuple(specs),
        warnings=warnings,
    )
