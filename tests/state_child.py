"""A child process for tests/test_state.py: a run that records results, or holds the lock.

state_child.py record STATE ENDPOINT PREFIX
    open a StateStore and record PREFIX-0, PREFIX-1, ... (each first `pending`, then
    `submitted`, as apply does), printing `recorded <id>` once record() has returned;
    commits every few records so a kill can land inside a commit too.
state_child.py hold STATE ENDPOINT COMMAND
    open a StateStore with COMMAND, print `locked`, wait for a line on stdin, release.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from modelsync.records import ModelRecord
from modelsync.redact import register_secret
from modelsync.state import StateStore


def _record(path: Path, endpoint: str, prefix: str) -> int:
    with StateStore(path, endpoint, lock_timeout=10, command="state_child record") as store:
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
    mode, path, endpoint, arg = argv
    if mode == "record":
        return _record(Path(path), endpoint, arg)
    return _hold(Path(path), endpoint, arg)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
