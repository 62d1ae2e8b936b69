"""Every body apply sends, checked against the published load_model request description.

The cases come from the manifest schema at collection time (``modelsync.manifest.schema()``):
every field of a model, and every value of every field the schema enumerates (deprecated
values included, in whatever ``enum``/``const``/``anyOf`` form the schema gives them). Each
case is a one-model manifest loaded with ``load_manifest``; the spec's ``body("no")`` and
``body("yes")``, with a key, must pass the sandbox's published request description
(``modelsync.sandbox.published_request()``), which is written from the API's published
schema and never from the manifest's. A body it refuses fails the test, naming the field,
the value and why: modelsync would send what the API refuses.

For a field the manifest leaves free where the published schema has an enum
(``model_subcategory`` today), one more case sends a value outside the published enum: the
manifest must refuse it, or the body fails.

The historical ``model_category`` values are the one known divergence, on purpose (DESIGN §1:
deprecated, not invalid): a test of their own checks that the description refuses them, that
the manifest warns about each, and that ``--strict`` refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsync.errors import ManifestError
from modelsync.manifest import load_manifest, schema
from modelsync.sandbox import published_request

KEY = "published-check-key"
TOKEN_VAR = "PUBLISHED_CHECK_TOKEN"
ENV = {TOKEN_VAR: "tok-123"}
# A value no published enum holds, for the fields the manifest leaves free.
OFF_ENUM = "not-a-published-value"

# One valid model: every case changes one field of it.
BASE: dict[str, Any] = {
    "model_id": "published-check",
    "url": "https://models.example.com/files/model.safetensors",
    "model_format": "safetensors",
    "model_category": "stable_diffusion",
}
# A value for each manifest field that has no enum (a new field needs one here).
SAMPLES: dict[str, Any] = {
    "model_id": "published-check.v2_b-1",
    "url": f"https://civitai.com/api/download/models/132760?type=Model&token=${{{TOKEN_VAR}}}",
    "model_name": "Published check",
    "model_image": "https://cdn.example.com/images/a.png",
    "model_subcategory": "lora",
    "labels": {"team": "portraits"},
}
# The url each model_format needs.
URL_FOR_FORMAT = {
    "diffusers": "stabilityai/stable-diffusion-xl-base-1.0",
    "safetensors": "https://models.example.com/files/model.safetensors",
    "ckpt": "https://models.example.com/files/model.ckpt",
}


@dataclass(frozen=True)
class Case:
    """One manifest field set to one value."""

    field: str
    value: Any
    probe: bool = False  # a value outside the published enum: the manifest must refuse it

    @property
    def id(self) -> str:
        shown = "<no sample>" if self.value is ... else json.dumps(self.value)
        return f"{self.field}={shown}"

    def model(self) -> dict[str, Any]:
        model = {**BASE, self.field: self.value}
        if self.field == "model_format" and self.value in URL_FOR_FORMAT:
            model["url"] = URL_FOR_FORMAT[self.value]
        return model


def _resolve(spec: Any, root: Mapping[str, Any]) -> Any:
    """Follow a local ``$ref`` (``#/$defs/...``)."""
    while isinstance(spec, Mapping) and isinstance(spec.get("$ref"), str):
        ref: str = spec["$ref"]
        assert ref.startswith("#/"), f"unexpected $ref {ref!r} in the manifest schema"
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        spec = {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def allowed_values(spec: Any, root: Mapping[str, Any]) -> list[Any]:
    """Every value an ``enum`` or ``const`` of ``spec`` allows (``not`` branches skipped)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        node = _resolve(node, root)
        if isinstance(node, Mapping):
            if "enum" in node:
                found.extend(node["enum"])
            if "const" in node:
                found.append(node["const"])
            for key, child in node.items():
                if key not in ("enum", "const", "not", "default", "examples"):
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(spec)
    unique: list[Any] = []
    for value in found:
        if not any(value == seen and type(value) is type(seen) for seen in unique):
            unique.append(value)
    return unique


def cases() -> Iterator[Case]:
    """The cases, from the manifest schema as it is now."""
    root = schema()
    model = _resolve(root["$defs"]["model"], root)
    enums = published_request().enums
    for field, spec in model["properties"].items():
        values = allowed_values(spec, root)
        for value in values or [SAMPLES.get(field, ...)]:
            yield Case(field, value)
        if not values and field in enums:
            yield Case(field, OFF_ENUM, probe=True)


def deprecated(case: Case) -> bool:
    """A historical value the manifest accepts with a warning (DESIGN §1) and the API no
    longer lists: the one place where modelsync knowingly sends what the description refuses."""
    historical = published_request().historical.get("model_category", {})
    return case.field == "model_category" and case.value in historical


def params(*, of_deprecated: bool) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases() if deprecated(c) == of_deprecated]


def write_manifest(path: Path, model: Mapping[str, Any]) -> Path:
    # JSON scalars and flow mappings are YAML: true stays a boolean, "no" a string.
    lines = ["version: 1", "models:"]
    for i, (name, value) in enumerate(model.items()):
        lines.append(f"{'  - ' if i == 0 else '    '}{name}: {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_cases_cover_every_manifest_field_and_enum() -> None:
    found = list(cases())
    fields = {case.field for case in found}
    root = schema()
    assert fields == set(_resolve(root["$defs"]["model"], root)["properties"])
    categories = {case.value for case in found if case.field == "model_category"}
    assert {"stable_diffusion", "stable_diffusion_xl"} <= categories
    assert {case.value for case in found if case.field == "model_format"} == set(URL_FOR_FORMAT)


@pytest.mark.parametrize("case", params(of_deprecated=False))
def test_every_body_apply_sends_is_what_the_api_publishes(tmp_path: Path, case: Case) -> None:
    if case.value is ...:
        pytest.fail(f"the manifest has a new field {case.field!r}: add a sample value to SAMPLES")
    path = write_manifest(tmp_path / "manifest.yaml", case.model())
    try:
        manifest = load_manifest(path, env=ENV)
    except ManifestError as exc:
        if case.probe:
            return  # the manifest refuses what the API refuses: as it should
        pytest.fail(f"the manifest schema allows {case.id} but load_manifest refuses it: {exc}")
    assert case.probe or len(manifest.models) == 1
    described = published_request()
    for spec in manifest.models:
        for force_load in ("no", "yes"):
            body = {"key": KEY, **spec.body(force_load)}
            assert "${" not in json.dumps(body), "the body must be interpolated"
            errors = described.check(body)
            assert not errors, (
                f"modelsync would send {case.id} (force_load {force_load!r}), which the "
                f"published load_model request (unchanged since "
                f"{described.published_since}) refuses: "
                + "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in errors.items())
            )


@pytest.mark.parametrize("case", params(of_deprecated=True))
def test_a_deprecated_value_is_sent_only_with_a_warning_and_never_under_strict(
    tmp_path: Path, case: Case
) -> None:
    # DESIGN §1: a value the API documented once and no longer lists is accepted, with a
    # warning naming it and its migration, because whether the service still takes it is
    # not documented; --strict refuses it. The published description refuses it.
    path = write_manifest(tmp_path / "manifest.yaml", case.model())
    manifest = load_manifest(path, env=ENV)
    (warning,) = [w for w in manifest.warnings if "model_category" in w.message]
    assert f"{case.value!r} is deprecated" in warning.message
    (spec,) = manifest.models
    assert published_request().check({"key": KEY, **spec.body("no")}), (
        f"the published description accepts {case.id}: it is not deprecated any more"
    )
    with pytest.raises(ManifestError) as raised:
        load_manifest(path, env=ENV, strict=True)
    assert "(an error because of --strict)" in str(raised.value)
