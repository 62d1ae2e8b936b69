"""Untimed inputs built with modelsync's own code: the bodies it sends, a state it wrote.

Run before the timed children, in this process, so that what the references post and
what plan reads is exactly what modelsync produces, not a copy of its rules:

- :func:`write_bodies`: one JSON body per line, as apply sends each create (the
  manifest's models with their defaults merged and ``${VAR}`` filled in, the policy's
  ``force_load``, the key last), serialised as requests' ``json=`` serialises it;
- :func:`write_state`: a state holding every model of a manifest as submitted, through
  the file backend's one writer (``StateStore``), as a first apply leaves it. An apply
  against a latency-0 sandbox would take ~150 s at 100,000 models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

# What the sandbox answers to a load_model that starts a load (and apply records).
ACCEPTED = {"status": "success", "message": "model load started"}


def write_bodies(manifest: Path, out: Path, *, key: str, env: Mapping[str, str]) -> int:
    """Write the body of every create apply would send for ``manifest``; return how many."""
    from modelsync.manifest import load_manifest
    from modelsync.plan import force_load_for

    loaded = load_manifest(manifest, env)
    with open(out, "w", encoding="utf-8") as handle:
        for spec in loaded.models:
            body = {**spec.body(force_load_for(spec, "create")), "key": key}
            # json.dumps with its default separators: what requests' json= sends.
            handle.write(json.dumps(body) + "\n")
    return len(loaded.models)


def write_state(manifest: Path, state: Path, *, endpoint: str, env: Mapping[str, str]) -> int:
    """Record every model of ``manifest`` as submitted in a new state; return how many."""
    from modelsync.manifest import load_manifest
    from modelsync.plan import force_load_for
    from modelsync.records import new_record, utc_now
    from modelsync.store.file import StateStore

    loaded = load_manifest(manifest, env)
    now = utc_now()
    with StateStore(state, endpoint, command="python -m benchmarks") as store:
        for spec in loaded.models:
            request = spec.request(force_load_for(spec, "create"))
            record = new_record(
                spec,
                request,
                "submitted",
                attempts=1,
                submitted_at=now,
                last_attempt_at=now,
                response=ACCEPTED,
            )
            store.record(spec.model_id, record)
    return len(loaded.models)
