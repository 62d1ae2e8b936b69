"""load_manifest(path) -> Manifest: file -> YAML -> schema -> checks -> secrets -> records.

The fixed pipeline of DESIGN §1. Every step reports all of its problems at once as
``Diagnostic`` values (``file:line:col``, the model, what is wrong and the fix), and
the pipeline stops after the first step that found any: later steps would only
repeat them in worse words. Raw dicts stay inside this package; callers get frozen
:class:`ModelSpec` records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelsync.defaults import DEFAULT_API_KEY_ENV, MODEL_DEFAULTS
from modelsync.errors import Diagnostic
from modelsync.gcpause import gc_paused
from modelsync.manifest.checks import _check_semantics, _interpolate
from modelsync.manifest.fastcheck import _fast_check
from modelsync.manifest.messages import _report_pasted_body, _report_schema_error, _Reporter
from modelsync.manifest.schemafile import _validator, schema
from modelsync.records import ModelSpec
from modelsync.yamlio import LoadedYaml, describe_yaml_type, load_yaml_file


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


def _schema_errors(data: Any) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Step 3: jsonschema's errors, each with the path of the value it was checked on.

    The fast path spares a valid manifest jsonschema. jsonschema costs ~400 µs per model:
    it only sees what the fast path doubts, the document's head (its models left out) and
    each model the fast path does not take, against the model schema less what that model
    certainly satisfies. The errors are those of the whole document, in linear time.
    """
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        yield from (((), error) for error in _validator().iter_errors(data))
        return
    fast = _fast_check()
    if not fast.head(data):
        head = {**data, "models": []}
        yield from (((), error) for error in _validator().iter_errors(head))
    validator = None
    for index, model in enumerate(models):
        if not fast(model):
            validator = validator or _validator()
            errors = validator.evolve(schema=fast.reduced(model)).iter_errors(model)
            yield from ((("models", index), error) for error in errors)


def _unlink(error: Any) -> None:
    """Break the cycles jsonschema makes between an error and its context (anyOf's branches).

    The collector is paused while a manifest loads: each such error, and everything it
    holds, would stay until the end (hundreds of MB for 100,000 wrong models).
    """
    stack = [error]
    while stack:
        for child in stack.pop().context:
            child.parent = None  # the error keeps its context (twice: also in its args)
            stack.append(child)


@gc_paused()
def load_manifest(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, strict: bool = False
) -> Manifest:
    """Run the whole pipeline on ``path``; raise ManifestError with every problem found.

    Warnings (suspicious but possibly right) are in ``Manifest.warnings``; with ``strict``
    (``--strict``) they are errors, each saying so.
    """
    env = os.environ if env is None else env
    loaded = load_yaml_file(Path(path))
    report = _Reporter(loaded, strict=strict)
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
    if _report_pasted_body(report, data, schema()["$defs"]["model"]["properties"]):
        report.fail_if_any()

    # Schema errors and the checks beyond the schema are reported together, so a user
    # fixes everything in one round: the checks run on every model the schema accepted.
    broken: set[int] = set()
    whole_document = False
    for prefix, error in _schema_errors(data):
        where = (*prefix, *error.absolute_path)
        _report_schema_error(report, data, error, where)
        _unlink(error)
        if len(where) >= 2 and where[0] == "models" and isinstance(where[1], int):
            broken.add(where[1])
        elif where in ((), ("models",)):
            whole_document = True
    if not whole_document:
        _check_semantics(report, data, broken)
    report.fail_if_any()

    resolved = _interpolate(report, data, env)
    report.fail_if_any()

    return _build(loaded.path, data, resolved, loaded, tuple(sorted(report.warnings)))


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
    base = {**MODEL_DEFAULTS, **defaults}
    default_labels = defaults.get("labels") or {}
    shared_labels = MappingProxyType({str(k): str(v) for k, v in default_labels.items()})
    no_secrets: Mapping[str, str] = MappingProxyType({})
    specs: list[ModelSpec] = []
    lines = loaded.item_lines(("models",))
    for index, model in enumerate(data["models"]):
        merged = {**base, **model}
        force_load = merged.get("force_load")
        own_labels = model.get("labels")
        labels = shared_labels
        if own_labels:
            labels = MappingProxyType(
                {str(k): str(v) for k, v in {**default_labels, **own_labels}.items()}
            )
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
                labels=labels,
                index=index,
                line=lines[index],
                resolved=MappingProxyType(resolved[index]) if resolved[index] else no_secrets,
            )
        )
    return Manifest(
        path=path,
        endpoint=target.get("endpoint"),
        api_key_env=target.get("api_key_env", DEFAULT_API_KEY_ENV),
        models=tuple(specs),
        warnings=warnings,
    )
