"""A child process for tests/test_state.py and tests/test_store_contract.py: a run that
records results, or holds the lock.

state_child.py record STATE ENDPOINT PREFIX
    open a StateStore and record PREFIX-0, PREFIX-1, ... (each first `pending`, then
    `submitted`, as apply does), printing `recorded <id>` once record() has returned;
    commits every few records so a kill can land inside a commit too.
state_child.py hold STATE ENDPOINT COMMAND
    open a StateStore with COMMAND, print `locked`, wait for a line on stdin, release.
state_child.py backend LOCATION ENDPOINT PREFIX MANIFEST
    as `record`, through the backend protocol: open_state(LOCATION, manifest_path=MANIFEST)
    and its open_writer(), so the same crash test runs against every backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from modelsync.records import ModelRecord
from modelsync.redact import register_secret
from modelsync.store import StateWriter, open_state
from modelsync.store.file import StateStore


def _record_into(store: StateWriter, prefix: str) -> int:
    print("ready", flush=True)
    for i in range(100_000):
        model_id = f"{prefix}-{i}"
        request = {"url": f"org/{model_id}", "model_format": "diffusers"}
        store.record(model_id, ModelRecord(f"sha256:{i:064x}", request, "pending", i))
        store.record(
            model_id,
            ModelRecord(
                f"sha256:{i:064x}",
                request,
                "submitted",
                i + 1,
                submitted_at="2026-11-25T10:00:00Z",
                response={"status": "success"},
            ),
        )
        print(f"recorded {model_id}", flush=True)
        if i % 7 == 6:
            store.commit()
    return 0


def _record(path: Path, endpoint: str, prefix: str) -> int:
    with StateStore(path, endpoint, lock_timeout=10, command="state_child record") as store:
        return _record_into(store, prefix)


def _backend(location: str, endpoint: str, prefix: str, manifest: str) -> int:
    backend = open_state(location, manifest_path=manifest, endpoint=endpoint)
    with backend.open_writer(lock_timeout=10, command="state_child backend") as writer:
        return _record_into(writer, prefix)


def _hold(path: Path, endpoint: str, command: str) -> int:
    secret = os.environ.get("STATE_CHILD_SECRET")
    if secret:
        register_secret(secret)
    with StateStore(path, endpoint, command=command):
        print("locked", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, location, endpoint, arg, *rest = argv
    if mode == "record":
        return _record(Path(location), endpoint, arg)
    if mode == "backend":
        return _backend(location, endpoint, arg, *rest)
    return _hold(Path(location), endpoint, arg)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
