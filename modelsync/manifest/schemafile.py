"""The manifest JSON Schema shipped in the package, and its validator (DESIGN §1, step 3).

Not named schema.py: the package re-exports the function ``schema``, which would hide
a submodule of that name (``from modelsync.manifest import schema`` is the function).
"""

from __future__ import annotations

import json
import pkgutil
from functools import cache
from typing import Any

from modelsync.yamlio import YamlDate


@cache
def schema() -> dict[str, Any]:
    """The manifest JSON Schema shipped in the package (the one source of truth)."""
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


def schema_text() -> str:
    """The schema as shipped, for ``modelsync schema``."""
    # pkgutil, not importlib.resources: the same package data (a wheel's file, a zip's
    # member) without importing zipfile and tempfile on every validate and plan.
    data = pkgutil.get_data("modelsync", "schemas/manifest.schema.json")
    assert data is not None  # the package's loader reads files
    return data.decode("utf-8")


@cache
def _validator() -> Any:
    # Imported here: a valid manifest never needs jsonschema (see fastcheck), and importing
    # it and building the validator is a quarter second of every validate and plan.
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
