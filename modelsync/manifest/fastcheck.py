"""The schema step's fast path: a valid manifest is accepted without jsonschema."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from modelsync.manifest.schemafile import schema


class _FastModelCheck:
    """A conservative fast path for the happy case, compiled from the schema itself.

    jsonschema costs about 150 µs per model; a 10,000-model manifest must validate
    in well under a second. This checks each model against predicates compiled from
    the model subschema (types, patterns, enums, lengths, required, the url if/then, the
    anyOf of current and deprecated categories). It only ever says "certainly valid": on
    any doubt the caller runs jsonschema on the whole document, which also produces the
    error messages. Deprecated values are valid here: their warnings come from the checks.
    """

    def __init__(self, root: Mapping[str, Any]) -> None:
        model = root["$defs"]["model"]
        defs = root["$defs"]
        self.model: Mapping[str, Any] = model
        self._reduced: dict[tuple[frozenset[str], bool], Mapping[str, Any]] = {}
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
        """A predicate that says "certainly valid"; ``_never`` where a keyword is unknown."""
        return _exact(sub, defs) or _never

    def reduced(self, model: Any) -> Mapping[str, Any]:
        """The model schema less what ``model`` certainly satisfies.

        jsonschema gives exactly the same errors on it as on the whole model schema (each
        property predicate is exact on its own), in a fraction of the time: a property that
        passes its predicate becomes ``true``, and the url's if/then/else goes when the url
        passes the branch the model's format picks, or is absent.
        """
        if type(model) is not dict:
            return self.model
        props = self.props
        passing = frozenset(k for k, v in model.items() if k in props and props[k](v))
        fmt = model.get(self.if_field)
        url_done = "url" not in model or (
            type(fmt) is str
            and (self.then_url if fmt == self.if_value else self.else_url)(model["url"])
        )
        key = (passing, url_done)
        found = self._reduced.get(key)
        if found is None:
            found = {k: v for k, v in self.model.items() if not (url_done and k in _BRANCH)}
            found["properties"] = {
                name: True if name in passing else sub
                for name, sub in self.model["properties"].items()
            }
            self._reduced[key] = found
        return found

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


_BRANCH = frozenset({"if", "then", "else"})
# Keywords that only inform (editors show them); they never change what is valid.
_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "$comment",
        "deprecated",
        "deprecationMessage",
        "patternErrorMessage",
        "examples",
    }
)


def _exact(sub: Mapping[str, Any], defs: Mapping[str, Any]) -> Callable[[Any], bool] | None:
    """A predicate that is True only where jsonschema accepts; None if a keyword is unknown."""
    checks: list[Callable[[Any], bool]] = []
    for key, value in sub.items():
        if key in _ANNOTATIONS or key in ("then", "else"):
            continue
        if key == "$ref":
            check = _exact(defs[value.rsplit("/", 1)[-1]], defs)
        elif key == "if":
            check = _condition(value, sub.get("then", {}), sub.get("else", {}), defs)
        elif key in ("anyOf", "allOf"):
            check = _combined(key, value, defs)
        else:
            check = _keyword_check(key, value)
        if check is None:
            return None
        checks.append(check)
    return _chain(checks)


def _chain(checks: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    """All of ``checks``, in order, without a generator per value (10,000 models)."""
    if not checks:  # a subschema of annotations only
        return _always
    if len(checks) == 1:
        return checks[0]
    first, rest = checks[0], _chain(checks[1:])

    def both(v: Any) -> bool:
        return first(v) and rest(v)

    return both


def _condition(
    cond: Mapping[str, Any],
    then: Mapping[str, Any],
    otherwise: Mapping[str, Any],
    defs: Mapping[str, Any],
) -> Callable[[Any], bool] | None:
    # The condition must say exactly what jsonschema says, or the wrong branch would be
    # checked: only a pattern is exact (the enum checks are stricter, on purpose).
    if set(cond) - _ANNOTATIONS != {"pattern"}:
        return None
    test, if_true, if_false = (
        _keyword_check("pattern", cond["pattern"]),
        _exact(then, defs),
        _exact(otherwise, defs),
    )
    if test is None or if_true is None or if_false is None:
        return None

    def branch(v: Any) -> bool:
        return if_true(v) if test(v) else if_false(v)

    return branch


def _combined(
    key: str, branches: list[Mapping[str, Any]], defs: Mapping[str, Any]
) -> Callable[[Any], bool] | None:
    # anyOf of values only (model_category: the current enum and one const per deprecated
    # value) is one set lookup, as fast as a plain enum.
    if key == "anyOf" and all(set(b) - _ANNOTATIONS in ({"enum"}, {"const"}) for b in branches):
        values = [v for b in branches for v in (b["enum"] if "enum" in b else [b["const"]])]
        return _keyword_check("enum", values)
    compiled = [_exact(b, defs) for b in branches]
    if any(c is None for c in compiled):
        return None
    checks = [c for c in compiled if c is not None]
    pick = any if key == "anyOf" else all

    def combined(v: Any) -> bool:
        return pick(check(v) for check in checks)

    return combined


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
    if (
        key == "propertyNames"
        and isinstance(value, dict)
        and set(value) - _ANNOTATIONS == {"pattern"}
    ):
        name_rx = re.compile(value["pattern"])

        def names_ok(v: Any) -> bool:
            return type(v) is not dict or all(
                type(k) is str and name_rx.search(k) is not None for k in v
            )

        return names_ok
    return None


@cache
def _fast_check() -> _FastModelCheck:
    """The fast path compiled from the shipped schema (once per process)."""
    return _FastModelCheck(schema())
