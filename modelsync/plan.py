"""The planner: pure. plan(manifest, state, selection) -> Plan. No I/O, no network.

``plan``, ``apply --dry-run`` and ``apply`` all call :func:`make_plan`, so what a
reviewer reads on a pull request is exactly what ``apply`` will do.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from modelsync.errors import UsageError
from modelsync.records import ModelRecord, ModelSpec, State, fingerprint

if TYPE_CHECKING:
    # Only a type here: the planner itself never loads YAML.
    from modelsync.manifest import Manifest

Action = Literal["create", "update", "retry", "conflict", "unchanged", "orphan"]
ACTIONS: tuple[Action, ...] = ("create", "update", "retry", "conflict", "unchanged", "orphan")
SYMBOLS: Mapping[Action, str] = MappingProxyType(
    {"create": "+", "update": "~", "retry": "↻", "conflict": "!", "unchanged": "=", "orphan": "-"}
)


@dataclass(frozen=True)
class FieldChange:
    """One sent field whose value differs from what was submitted last time."""

    before: Any
    after: Any


@dataclass(frozen=True)
class Change:
    """What apply will do (or not do) for one model id."""

    model_id: str
    action: Action
    force_load: str | None = None  # what will be sent; None for unchanged and orphan
    fields: Mapping[str, FieldChange] = field(default_factory=lambda: MappingProxyType({}))
    spec: ModelSpec | None = None  # None for an orphan
    previous: ModelRecord | None = None

    @property
    def submits(self) -> bool:
        """True when apply sends a request for this change."""
        return self.action in ("create", "update", "retry")


@dataclass(frozen=True)
class Selector:
    """A label condition: ``key=value`` or ``key!=value``."""

    key: str
    value: str
    negate: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when the labels satisfy the condition (a missing label is "not equal")."""
        equal = labels.get(self.key) == self.value
        return not equal if self.negate else equal

    def __str__(self) -> str:
        return f"{self.key}{'!=' if self.negate else '='}{self.value}"


def parse_selectors(texts: Iterable[str]) -> tuple[Selector, ...]:
    """Parse ``--selector`` values (repeatable, or comma-separated as in kubectl)."""
    selectors: list[Selector] = []
    for text in texts:
        for part in text.split(","):
            part = part.strip()
            negate = "!=" in part
            key, sep, value = part.partition("!=" if negate else "=")
            key, value = key.strip(), value.strip()
            if not sep or not key or "=" in value:
                raise UsageError(
                    f"--selector {part!r} is not 'key=value' or 'key!=value' "
                    "(labels are set under 'labels:' in the manifest)"
                )
            selectors.append(Selector(key, value, negate))
    return tuple(selectors)


@dataclass(frozen=True)
class Selection:
    """The subset of models a run works on: ``--only``, ``--exclude``, ``--selector``."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selectors: tuple[Selector, ...] = ()

    @property
    def active(self) -> bool:
        """True when a subset is selected (orphans are then not reported)."""
        return bool(self.only or self.exclude or self.selectors)

    def matches(self, spec: ModelSpec) -> bool:
        """True when the model is part of the selection."""
        if not self.active:
            return True
        if self.only and not any(fnmatch.fnmatchcase(spec.model_id, p) for p in self.only):
            return False
        if any(fnmatch.fnmatchcase(spec.model_id, p) for p in self.exclude):
            return False
        return all(s.matches(spec.labels) for s in self.selectors)

    def unknown_labels(self, label_keys: Iterable[str], manifest_path: str) -> list[str]:
        """A warning per ``--selector`` on a label key no model has (a likely typo)."""
        if not self.selectors:
            return []  # no need to gather every model's labels
        keys = sorted(set(label_keys))
        return [
            f"warning: --selector {s}: no model has the label {s.key!r}; the labels in "
            f"{manifest_path} are: {', '.join(keys)}"
            if keys
            else f"warning: --selector {s}: no model in {manifest_path} has labels "
            "(set them under 'labels:')"
            for s in self.selectors
            if s.key not in keys
        ]

    def unmatched_patterns(self, model_ids: Sequence[str]) -> list[str]:
        """``--only``/``--exclude`` patterns that match no model id (likely typos)."""
        return [
            p
            for p in (*self.only, *self.exclude)
            if not any(fnmatch.fnmatchcase(m, p) for m in model_ids)
        ]


@dataclass(frozen=True)
class Plan:
    """Every change, in manifest order, orphans last."""

    changes: tuple[Change, ...]
    selection: Selection = Selection()

    @property
    def summary(self) -> dict[str, int]:
        """Counts per action, every action present."""
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def to_submit(self) -> tuple[Change, ...]:
        """The creates, updates and retries, in manifest order."""
        return tuple(c for c in self.changes if c.submits)

    @property
    def has_changes(self) -> bool:
        """True when apply would send something, or a conflict waits for a decision.

        Orphans alone are not changes: apply would send nothing for them.
        """
        return any(c.submits or c.action == "conflict" for c in self.changes)


def force_load_for(spec: ModelSpec, action: Action, previous: ModelRecord | None = None) -> str:
    """The force_load policy of DESIGN §4: what a submission of ``spec`` sends.

    As written, when the manifest says. Otherwise ``no`` for a create and ``yes`` for an
    update. A retry follows why the last attempt failed: after a request that may have
    reached the server (``pending``, ``maybe_reached``) ``yes``, since this tool's own
    request may have created the model; after one that never left or was refused
    (``never_sent``, ``rejected``) what the original action sends. A record from before
    causes were kept retries with ``yes``, as it always did.
    """
    if spec.force_load is not None:
        return spec.force_load
    if (
        action == "retry"
        and previous is not None
        and previous.status == "failed"
        and previous.cause in ("never_sent", "rejected")
    ):
        original: Action = "create" if previous.submitted_at is None else "update"
        return force_load_for(spec, original)
    return "no" if action == "create" else "yes"


def resend_force_load(spec: ModelSpec) -> str:
    """What a resend sends after an attempt of this run that may have reached the server."""
    return spec.force_load if spec.force_load is not None else "yes"


def _field_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, FieldChange]:
    changes: dict[str, FieldChange] = {}
    for name in (*after, *(k for k in before if k not in after)):
        if name == "force_load":
            continue
        old, new = before.get(name), after.get(name)
        if old != new:
            changes[name] = FieldChange(old, new)
    return changes


def make_plan(manifest: Manifest, state: State, selection: Selection = Selection()) -> Plan:
    """Compare the manifest with the state: create, update, retry, unchanged, orphan."""
    changes: list[Change] = []
    models = state.models
    for spec in manifest.models:
        if not selection.matches(spec):
            continue
        record = models.get(spec.model_id)
        if record is None:
            action: Action = "create"
        elif record.cause == "conflict" and spec.force_load != "yes":
            # Someone else's model of this id is on the account: never overwritten behind
            # the user's back, in this run or a later one (DESIGN §4).
            changes.append(Change(spec.model_id, "conflict", spec=spec, previous=record))
            continue
        elif record.status != "submitted":
            action = "retry"
        elif record.fingerprint != spec.fingerprint:
            action = "update"
        else:
            changes.append(Change(spec.model_id, "unchanged", spec=spec, previous=record))
            continue
        force_load = force_load_for(spec, action, record)
        fields: Mapping[str, FieldChange] = MappingProxyType({})
        if record is not None and fingerprint(record.request) != spec.fingerprint:
            fields = MappingProxyType(_field_changes(record.request, spec.request(force_load)))
        changes.append(Change(spec.model_id, action, force_load, fields, spec, record))
    if not selection.active:
        declared = {spec.model_id for spec in manifest.models}
        for model_id in sorted(models):
            if model_id not in declared:
                changes.append(Change(model_id, "orphan", previous=models[model_id]))
    return Plan(tuple(changes), selection)
