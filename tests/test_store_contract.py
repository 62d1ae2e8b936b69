"""The contract every state backend passes (DESIGN §2, §2b), driven through the protocol only.

Each test gets ``connect``: it opens the backend under test with ``open_state(location,
manifest_path=..., endpoint=...)``, as modelsync itself does. To run the suite against a
new backend, add its name to ``BACKENDS`` and a ``<name>_location`` fixture that returns a
fresh, empty ``--state`` value (a path, a URL) for one test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsync.errors import ExitCode, StateError, StateLockedError
from modelsync.records import ModelRecord
from modelsync.store import StateBackend, open_state
from tests.pg import pg_database, pg_location, pg_schema

__all__ = ["pg_database", "pg_location", "pg_schema"]  # fixtures of tests.pg used here

ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
OTHER_ENDPOINT = "https://other.example/api/v3/load_model"
SANDBOX_ENDPOINT = "http://127.0.0.1:8765/api/v3/load_model"
CHILD = Path(__file__).with_name("state_child.py")

BACKENDS = ["file", "postgres"]

Connect = Callable[..., StateBackend]


@pytest.fixture
def file_location(tmp_path: Path) -> str:
    return str(tmp_path / "manifests" / ".modelsync" / "prod.state.json")


@pytest.fixture
def postgres_location(pg_location: str) -> str:
    """A state of its own schema in the test run's database (tests/pg.py)."""
    return pg_location


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(f"{request.param}_location")
    return value


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return tmp_path / "manifests" / "prod.yaml"


@pytest.fixture
def connect(location: str, manifest: Path) -> Connect:
    """A new backend object for the state under test (each call: a separate object)."""

    def make(endpoint: str = ENDPOINT) -> StateBackend:
        return open_state(location, manifest_path=manifest, endpoint=endpoint)

    return make


def rec(n: int = 1, status: str = "submitted", **extra: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "fingerprint": f"sha256:{n:064x}",
        "request": {"url": f"org/m{n}", "model_format": "diffusers", "model_category": "vae"},
        "status": status,
        "attempts": 1,
    }
    fields.update(extra)
    return ModelRecord(**fields)


def write(backend: StateBackend, records: dict[str, ModelRecord]) -> None:
    with backend.open_writer(lock_timeout=0, command="test") as writer:
        for model_id, record in records.items():
            writer.record(model_id, record)


# --------------------------------------------------------------------------- reading


def test_missing_state_reads_as_an_empty_first_run(connect: Connect) -> None:
    backend = connect()
    state = backend.read()
    assert (state.exists, state.serial, dict(state.models), state.endpoint) == (
        False,
        0,
        {},
        ENDPOINT,
    )
    assert state.location == backend.location
    assert isinstance(state.lineage, str) and state.lineage
    assert not connect().read().exists  # reading created nothing


def test_recorded_results_read_back_from_any_backend_object(connect: Connect) -> None:
    full = rec(
        1,
        attempts=3,
        submitted_at="2026-11-25T10:00:00Z",
        last_attempt_at="2026-11-25T10:00:05Z",
        response={"status": "success", "nested": [1, {"a": None}]},
        last_error="HTTP 503",
    )
    expected = {"full": full, "failed": rec(2, "failed"), "pending": rec(3, "pending")}
    backend = connect()
    with backend.open_writer(lock_timeout=0, command="test") as writer:
        for model_id, record in expected.items():
            writer.record(model_id, record)
        assert dict(writer.state.models) == expected
        assert writer.state.location == backend.location
        # Recorded as they happen: a reader sees them before any commit.
        assert dict(connect().read().models) == expected
    for reader in (backend, connect()):
        state = reader.read()
        assert state.exists
        assert state.serial == 1
        assert state.endpoint == ENDPOINT
        assert dict(state.models) == expected


def test_record_replaces_the_previous_record_of_a_model(connect: Connect) -> None:
    write(connect(), {"a": rec(1, "pending")})
    write(connect(), {"a": rec(1, "submitted", attempts=2)})
    assert dict(connect().read().models) == {"a": rec(1, "submitted", attempts=2)}


def test_forget_drops_records_and_ignores_unknown_ids(connect: Connect) -> None:
    write(connect(), {"a": rec(1), "b": rec(2)})
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        writer.forget(["a", "nope"])
        assert sorted(writer.state.models) == ["b"]
        assert sorted(connect().read().models) == ["b"]
    state = connect().read()
    assert (sorted(state.models), state.serial) == (["b"], 2)
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        writer.forget(["nope"])
    assert connect().read().serial == 2


def test_serial_grows_by_one_per_changing_commit_and_lineage_never_changes(
    connect: Connect,
) -> None:
    write(connect(), {"a": rec(1)})
    first = connect().read()
    assert first.serial == 1
    write(connect(), {"b": rec(2)})
    assert (connect().read().serial, connect().read().lineage) == (2, first.lineage)
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        writer.record("c", rec(3))
        writer.commit()
        assert writer.state.serial == 3
        writer.commit()  # nothing new
        assert writer.state.serial == 3
        writer.record("c", rec(3))  # the same result again
        writer.commit()
        assert writer.state.serial == 3
        assert writer.state.lineage == first.lineage
        writer.record("d", rec(4))
    with connect().open_writer(lock_timeout=0, command="test"):
        pass  # a run that records nothing
    state = connect().read()
    assert (state.serial, state.lineage) == (4, first.lineage)
    assert sorted(state.models) == ["a", "b", "c", "d"]


def test_leaving_the_writer_after_an_error_commits_and_unlocks(connect: Connect) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        connect().open_writer(lock_timeout=0, command="test") as writer,
    ):
        writer.record("a", rec(1))
        raise KeyboardInterrupt
    state = connect().read()
    assert (list(state.models), state.serial) == (["a"], 1)
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        assert list(writer.state.models) == ["a"]


def test_records_from_many_threads_are_all_kept(connect: Connect) -> None:
    threads, per_thread = 8, 10
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                writer.record(f"t{t}-{i}", rec(i, attempts=t))

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
    models = connect().read().models
    assert set(models) == {f"t{t}-{i}" for t in range(threads) for i in range(per_thread)}
    assert models["t5-7"] == rec(7, attempts=5)


# --------------------------------------------------------------------------- trust


def test_endpoint_mismatch_is_refused_with_exit_4(connect: Connect) -> None:
    write(connect(), {"a": rec(1)})
    other = connect(OTHER_ENDPOINT)

    def open_and_leave() -> None:
        with other.open_writer(lock_timeout=0, command="test"):
            pass

    for attempt in (other.read, open_and_leave):
        with pytest.raises(StateError) as info:
            attempt()
        assert not isinstance(info.value, StateLockedError)
        assert info.value.exit_code == ExitCode.STATE
        message = str(info.value)
        assert f"state {other.location} was written for endpoint {ENDPOINT}" in message
        assert f"but this run targets {OTHER_ENDPOINT}" in message
        assert f"pass --endpoint {ENDPOINT} to use this state" in message
        assert "pass --state to keep a separate state per endpoint" in message
    # Nothing was changed, and the refused writer let the lock go.
    with connect().open_writer(lock_timeout=0, command="test") as writer:
        assert (dict(writer.state.models), writer.state.serial) == ({"a": rec(1)}, 1)


# --------------------------------------------------------------------------- lock


def test_second_writer_is_locked_out_naming_the_holder(connect: Connect) -> None:
    backend = connect()
    command = "modelsync apply manifests/prod.yaml"
    with backend.open_writer(lock_timeout=0, command=command) as writer:
        holder = connect().describe_holder()
        assert holder.startswith(f"pid {os.getpid()} (")
        assert f'"{command}"' in holder
        started = time.monotonic()
        with (
            pytest.raises(StateLockedError) as info,
            connect().open_writer(lock_timeout=0, command="modelsync plan"),
        ):
            pass
        assert time.monotonic() - started < 1
        assert info.value.exit_code == ExitCode.STATE
        message = str(info.value)
        assert message.startswith(f"state {backend.location} is locked by pid {os.getpid()} (")
        assert f'"{command}"' in message
        assert message.endswith("; wait for it, or pass --lock-timeout SECONDS")
        # The refused writer changed nothing for the holder.
        writer.record("a", rec(1))
    assert list(connect().read().models) == ["a"]
    with connect().open_writer(lock_timeout=0, command="test"):
        pass


@pytest.mark.slow
def test_lock_timeout_waits_for_the_holder(connect: Connect) -> None:
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with connect().open_writer(lock_timeout=0, command="holder") as writer:
            writer.record("a", rec(1))
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with (
            pytest.raises(StateLockedError, match=r"\(waited 0.3 s\)"),
            connect().open_writer(lock_timeout=0.3, command="waiter"),
        ):
            pass
        assert time.monotonic() - started >= 0.25
        timer = threading.Timer(0.5, release.set)
        timer.start()
        started = time.monotonic()
        with connect().open_writer(lock_timeout=10, command="waiter") as writer:
            waited = time.monotonic() - started
            assert dict(writer.state.models) == {"a": rec(1)}
        timer.join()
    finally:
        release.set()
        holder.join(10)
    assert 0.4 < waited < 5


# --------------------------------------------------------------------------- crash


class Child:
    """A ``state_child.py backend`` process: records results until it is killed."""

    def __init__(self, location: str, manifest: Path, prefix: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "backend", location, ENDPOINT, prefix, str(manifest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def recorded(self) -> set[str]:
        return {line.split()[1] for line in list(self.lines) if line.startswith("recorded ")}

    def kill_after(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.recorded()) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"child recorded too little: {self.lines} {err}")
            time.sleep(0.002)
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@pytest.mark.slow
def test_kill_9_loses_no_recorded_result(
    connect: Connect, location: str, manifest: Path, children: list[Child]
) -> None:
    reported: set[str] = set()
    lineage: str | None = None
    # No writer between the kills: each child starts from what the one before left.
    for round_, count in enumerate((3, 12, 25)):
        child = Child(location, manifest, f"r{round_}")
        children.append(child)
        child.kill_after(count)
        assert child.proc.returncode == -signal.SIGKILL
        reported |= child.recorded()
        state = connect().read()
        assert reported <= set(state.models), sorted(reported - set(state.models))
        assert all(state.models[m].status == "submitted" for m in reported)
        lineage = lineage or state.lineage
        assert state.lineage == lineage
    assert len(reported) >= 40
    # The lock died with the last child.
    with connect().open_writer(lock_timeout=5, command="test") as writer:
        assert reported <= set(writer.state.models)
    state = connect().read()
    assert reported <= set(state.models)
    assert state.lineage == lineage


# --------------------------------------------------------------------------- sandbox


def test_for_sandbox_is_an_independent_state(connect: Connect) -> None:
    main = connect()
    sandbox = main.for_sandbox(SANDBOX_ENDPOINT)
    assert sandbox.location != main.location
    assert not sandbox.read().exists
    write(main, {"a": rec(1)})
    assert not sandbox.read().exists
    # Each has its own lock: both writers at once.
    with (
        main.open_writer(lock_timeout=0, command="test") as main_writer,
        sandbox.open_writer(lock_timeout=0, command="test") as sandbox_writer,
    ):
        main_writer.record("b", rec(2))
        sandbox_writer.record("s", rec(3))
    main_state, sandbox_state = connect().read(), connect().for_sandbox(SANDBOX_ENDPOINT).read()
    assert sorted(main_state.models) == ["a", "b"]
    assert (main_state.endpoint, main_state.serial) == (ENDPOINT, 2)
    assert sorted(sandbox_state.models) == ["s"]
    assert (sandbox_state.endpoint, sandbox_state.serial) == (SANDBOX_ENDPOINT, 1)
    assert sandbox_state.location == sandbox.location
    assert sandbox_state.lineage != main_state.lineage
