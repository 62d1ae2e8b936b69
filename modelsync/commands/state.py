"""``modelsync state list|show|rm|adopt``: inspect and edit the state."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from modelsync.errors import UsageError
from modelsync.records import ModelRecord, State, new_record, utc_now
from modelsync.settings import Settings
from modelsync.store import open_state
from modelsync.store import postgres_admin as admin
from modelsync.store.postgres_admin import Migrated, Unlocked


def read(settings: Settings) -> State:
    """The state, read-only."""
    return settings.open_state().read()


def show(settings: Settings, model_id: str) -> ModelRecord:
    """One model's record; a usage error naming the state when it has none."""
    backend = settings.open_state()
    models = backend.read().models
    record = models.get(model_id)
    if record is None:
        raise UsageError(
            f"{model_id!r} is not in the state {backend.location}{_near(model_id, models)}"
        )
    return record


def _near(model_id: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest ids (best first, ties by name), or ``""``."""
    scores = {k: difflib.SequenceMatcher(None, model_id, k).ratio() for k in known}
    near = sorted((k for k, score in scores.items() if score >= 0.6), key=lambda k: (-scores[k], k))
    return f" (did you mean {' or '.join(repr(k) for k in near[:3])}?)" if near else ""


def rm(settings: Settings, model_ids: Sequence[str]) -> list[str]:
    """Drop records from the state (nothing is deleted remotely)."""
    backend = settings.open_state()
    with backend.open_writer(
        lock_timeout=settings.lock_timeout, command="modelsync state rm"
    ) as writer:
        missing = [m for m in model_ids if m not in writer.state.models]
        if missing:
            raise UsageError(
                f"not in the state {backend.location}: {', '.join(missing)} "
                "(see 'modelsync state list')"
            )
        writer.forget(model_ids)
    return list(model_ids)


def adopt(settings: Settings, model_ids: Sequence[str]) -> list[str]:
    """Record models that already exist on the account as submitted, without a request."""
    manifest = settings.manifest
    specs = []
    for model_id in model_ids:
        spec = manifest.model(model_id)
        if spec is None:
            raise UsageError(
                f"{model_id!r} is not in {settings.manifest_path}: add it to the manifest "
                "first, as it exists on the account"
            )
        specs.append(spec)
    backend = settings.open_state()
    with backend.open_writer(
        lock_timeout=settings.lock_timeout, command="modelsync state adopt"
    ) as writer:
        now = utc_now()
        for spec in specs:
            adopted = {"status": "adopted", "message": "recorded by modelsync state adopt"}
            record = new_record(
                spec,
                spec.request(spec.force_load or "no"),
                "submitted",
                submitted_at=now,
                response=adopted,
            )
            writer.record(spec.model_id, record)
    return [s.model_id for s in specs]


def describe(state: State) -> dict[str, Any]:
    """The state as a JSON document (for ``state list --output json``)."""
    return {
        "format_version": 1,
        "state": state.location,
        "lineage": state.lineage if state.exists else None,
        "serial": state.serial,
        "endpoint": state.endpoint,
        "models": {k: v.to_json() for k, v in sorted(state.models.items())},
    }


def migrate(settings: Settings, to: str) -> Migrated:
    """Copy the state to ``to`` (a path or a URL), keeping lineage and serial; the target
    must be empty, and the source stays as it is."""
    source = settings.open_state()
    target = open_state(
        to,
        manifest_path=settings.manifest_path,
        endpoint=settings.target_endpoint,
        skip_schema_creation=settings.skip_schema_creation,
    )
    return admin.migrate(
        source,
        target,
        lock_timeout=settings.lock_timeout,
        command=settings.command,
    )


def unlock(settings: Settings, epoch: int) -> Unlocked:
    """Break the lease of a PostgreSQL state at ``epoch``, whose holder is known to be gone."""
    # No endpoint check: breaking a lease reads no records, and a manifest that does not
    # load must not stand in the way of it.
    location = settings.state_location
    backend = open_state(location, manifest_path=settings.manifest_path, endpoint="")
    return admin.unlock(backend, epoch)


def ddl(settings: Settings) -> str:
    """The SQL that creates a PostgreSQL state's tables (no connection, no manifest read)."""
    return admin.ddl(settings.state_location, settings.manifest_path)
