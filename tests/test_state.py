from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import pytest

from modelsync import redact
from modelsync.errors import ExitCode, StateError, StateLockedError
from modelsync.records import ModelRecord
from modelsync.store import default_location
from modelsync.store import journal as journal_module
from modelsync.store.file import FileBackend, StateStore, read_state
from modelsync.store.trust import FORMAT_VERSION

ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
CHILD = Path(__file__).with_name("state_child.py")


def rec(n: int = 1, status: str = "submitted", **extra: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "fingerprint": f"sha256:{n:064x}",
        "request": {"url": f"org/m{n}", "model_format": "diffusers", "model_category": "vae"},
        "status": status,
        "attempts": 1,
    }
    fields.update(extra)
    return ModelRecord(**fields)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "manifests" / ".modelsync" / "prod.state.json"


def sib(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def apply(path: Path, records: dict[str, ModelRecord], endpoint: str = ENDPOINT) -> None:
    with StateStore(path, endpoint) as store:
        for model_id, record in records.items():
            store.record(model_id, record)


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def write_journal(path: Path, lineage: str, base: int, ops: list[Any], tail: bytes = b"") -> None:
    """Write a journal as a run that was killed would leave it (the documented format)."""
    header = {"op": "begin", "format_version": 1, "lineage": lineage, "base_serial": base}
    lines = [json.dumps(header)] + [json.dumps(op) for op in ops]
    sib(path, ".journal").write_bytes(("\n".join(lines) + "\n").encode() + tail)


def put(model_id: str, record: ModelRecord) -> dict[str, Any]:
    return {"op": "put", "model_id": model_id, "record": record.to_json()}


def listing(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file beside the state, but the lock: some filelock versions touch it on each
    lock, and it holds nothing of the state."""
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in sorted(folder.iterdir())
        if not p.name.endswith(".lock")
    }


# --------------------------------------------------------------------------- paths


def test_default_state_path_is_beside_the_manifest() -> None:
    assert default_location(Path("manifests/prod.yaml")) == Path(
        "manifests/.modelsync/prod.state.json"
    )


def test_sandbox_state_path_is_a_sibling() -> None:
    sandbox = "http://127.0.0.1:8765/api/v3/load_model"
    main = FileBackend(Path("m/.modelsync/prod.state.json"), ENDPOINT).for_sandbox(sandbox)
    assert main.path == Path("m/.modelsync/prod.sandbox.state.json")
    assert main.endpoint == sandbox
    custom = FileBackend("custom.json", ENDPOINT).for_sandbox(sandbox)
    assert custom.path == Path("custom.sandbox.state.json")


# --------------------------------------------------------------------------- round trip


def test_read_state_missing_is_a_first_run_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".modelsync" / "prod.state.json"
    state = read_state(path, ENDPOINT)
    assert (state.exists, state.serial, dict(state.models), state.endpoint) == (
        False,
        0,
        {},
        ENDPOINT,
    )
    assert len(state.lineage) == 36
    assert list(tmp_path.iterdir()) == []


def test_round_trip_keeps_every_field(path: Path) -> None:
    full = rec(
        1,
        attempts=3,
        submitted_at="2026-11-25T10:00:00Z",
        last_attempt_at="2026-11-25T10:00:05Z",
        response={"status": "success", "message": "model load started", "nested": [1, {"a": None}]},
        last_error="HTTP 503",
    )
    apply(path, {"majicmix": full, "failed": rec(2, "failed"), "pending": rec(3, "pending")})
    state = read_state(path, ENDPOINT)
    assert state.exists
    assert state.serial == 1
    assert dict(state.models) == {
        "majicmix": full,
        "failed": rec(2, "failed"),
        "pending": rec(3, "pending"),
    }
    with pytest.raises(TypeError):
        state.models["x"] = rec()  # type: ignore[index]


def test_snapshot_format_is_a_sorted_line_per_model_with_trailing_newline(path: Path) -> None:
    apply(path, {"b": rec(2), "a": rec(1)})
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)

    def line(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    header = {k: doc[k] for k in ("endpoint", "format_version", "lineage", "serial")}
    assert text.split("\n") == [
        line(header)[:-1] + ',"models":{',
        f'"a":{line(doc["models"]["a"])},',
        f'"b":{line(doc["models"]["b"])}',
        "}}",
        "",
    ]
    assert set(doc) == {"format_version", "lineage", "serial", "endpoint", "models"}
    assert doc["format_version"] == FORMAT_VERSION == 1
    assert doc["endpoint"] == ENDPOINT
    assert list(doc["models"]) == ["a", "b"]
    assert doc["models"]["a"] == {
        "fingerprint": f"sha256:{1:064x}",
        "request": {"url": "org/m1", "model_format": "diffusers", "model_category": "vae"},
        "status": "submitted",
        "attempts": 1,
        "submitted_at": None,
        "last_attempt_at": None,
        "response": None,
        "last_error": None,
    }


def test_serial_grows_by_one_per_changing_write_and_lineage_never_changes(path: Path) -> None:
    apply(path, {"a": rec(1)})
    first = load(path)
    assert first["serial"] == 1
    assert not sib(path, ".backup").exists()  # nothing existed before the first run
    apply(path, {"b": rec(2)})
    second = load(path)
    assert second["serial"] == 2
    assert second["lineage"] == first["lineage"]
    with StateStore(path, ENDPOINT) as store:
        store.record("c", rec(3))
        store.commit()
        assert store.state.serial == 3
        store.record("d", rec(4))
    third = load(path)
    assert third["serial"] == 4
    assert third["lineage"] == first["lineage"]
    assert sorted(third["models"]) == ["a", "b", "c", "d"]


def test_backup_holds_the_previous_snapshot(path: Path) -> None:
    apply(path, {"a": rec(1)})
    before = path.read_bytes()
    apply(path, {"a": rec(1, "failed")})
    assert sib(path, ".backup").read_bytes() == before
    assert load(path)["models"]["a"]["status"] == "failed"


def test_unchanged_commit_writes_nothing(path: Path) -> None:
    apply(path, {"a": rec(1)})
    apply(path, {"a": rec(1, "failed")})
    before = listing(path.parent)
    time.sleep(0.01)  # so that a rewrite would show in mtime_ns
    apply(path, {"a": rec(1, "failed")})  # records the same result again
    with StateStore(path, ENDPOINT) as store:
        store.commit()
        assert store.state.serial == 2
    assert listing(path.parent) == before
    assert load(path)["serial"] == 2


def test_first_run_without_results_creates_no_state(path: Path) -> None:
    with StateStore(path, ENDPOINT) as store:
        assert not store.state.exists
    assert not path.exists()
    assert not read_state(path, ENDPOINT).exists


def test_files_are_private(path: Path) -> None:
    old = os.umask(0o022)
    try:
        apply(path, {"a": rec(1)})
        path.chmod(0o644)  # e.g. checked out from git
        with StateStore(path, ENDPOINT) as store:
            store.record("b", rec(2))
            for suffix in (".journal", ".lock", ".lock.info"):
                assert stat.S_IMODE(sib(path, suffix).stat().st_mode) == 0o600, suffix
    finally:
        os.umask(old)
    for p in (path, sib(path, ".backup"), sib(path, ".lock")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "prod.state.json",
        "prod.state.json.backup",
        "prod.state.json.lock",
    ]


def test_forget_removes_models_and_ignores_unknown_ids(path: Path) -> None:
    apply(path, {"a": rec(1), "b": rec(2)})
    with StateStore(path, ENDPOINT) as store:
        store.forget(["a", "nope"])
        assert sorted(store.state.models) == ["b"]
        assert sorted(read_state(path, ENDPOINT).models) == ["b"]  # journaled already
    assert sorted(load(path)["models"]) == ["b"]
    assert load(path)["serial"] == 2
    with StateStore(path, ENDPOINT) as store:
        store.forget(["nope"])
    assert load(path)["serial"] == 2


def test_store_is_usable_only_inside_its_with_block(path: Path) -> None:
    store = StateStore(path, ENDPOINT)
    with pytest.raises(RuntimeError):
        store.record("a", rec())
    with store:
        store.record("a", rec())
    with pytest.raises(RuntimeError):
        store.record("b", rec())


def test_exit_after_an_exception_still_commits_and_unlocks(path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), StateStore(path, ENDPOINT) as store:
        store.record("a", rec(1))
        raise KeyboardInterrupt
    assert list(load(path)["models"]) == ["a"]
    assert not sib(path, ".journal").exists()
    assert not sib(path, ".lock.info").exists()
    with StateStore(path, ENDPOINT):
        pass


# --------------------------------------------------------------------------- journal


@pytest.mark.slow
def test_record_appends_o1_bytes_whatever_the_state_size(tmp_path: Path) -> None:
    growth = []
    for size in (1, 2000):
        path = tmp_path / f"s{size}" / "x.state.json"
        apply(path, {f"m{i:05d}": rec(i) for i in range(size)})
        with StateStore(path, ENDPOINT) as store:
            store.record("new", rec(7))
            after_one = sib(path, ".journal").stat().st_size
            store.record("new", rec(7, "failed"))
            growth.append(sib(path, ".journal").stat().st_size - after_one)
    assert growth[0] == growth[1] < 400


def test_journal_format_header_then_one_line_per_result(path: Path) -> None:
    apply(path, {"a": rec(1)})
    with StateStore(path, ENDPOINT) as store:
        store.record("b", rec(2))
        store.forget(["a"])
        lines = [json.loads(x) for x in sib(path, ".journal").read_text().splitlines()]
    assert lines == [
        {"op": "begin", "format_version": 1, "lineage": load(path)["lineage"], "base_serial": 1},
        {"op": "put", "model_id": "b", "record": rec(2).to_json()},
        {"op": "del", "model_id": "a"},
    ]
    assert not sib(path, ".journal").exists()


def test_read_state_folds_a_leftover_journal_and_ignores_a_torn_line(path: Path) -> None:
    apply(path, {"a": rec(1), "b": rec(2)})
    lineage = load(path)["lineage"]
    torn = json.dumps(put("c", rec(3))).encode()[:-7]
    write_journal(path, lineage, 1, [put("x", rec(9)), {"op": "del", "model_id": "a"}], tail=torn)
    state = read_state(path, ENDPOINT)
    assert sorted(state.models) == ["b", "x"]
    assert state.serial == 1


def test_read_state_never_writes(path: Path) -> None:
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})
    write_journal(path, load(path)["lineage"], 2, [put("c", rec(3))], tail=b'{"op": "pu')
    before = listing(path.parent)
    time.sleep(0.01)
    for _ in range(3):
        assert sorted(read_state(path, ENDPOINT).models) == ["a", "b", "c"]
    assert listing(path.parent) == before


def test_store_folds_a_leftover_journal_into_a_new_snapshot(path: Path) -> None:
    apply(path, {"a": rec(1)})
    lineage = load(path)["lineage"]
    write_journal(path, lineage, 1, [put("b", rec(2))], tail=b'{"op":"put","mod')
    with StateStore(path, ENDPOINT) as store:
        # Folded and committed before this run records anything.
        assert not sib(path, ".journal").exists()
        assert sorted(load(path)["models"]) == ["a", "b"]
        assert store.state.serial == 2
        store.record("c", rec(3))
    doc = load(path)
    assert (doc["serial"], doc["lineage"], sorted(doc["models"])) == (3, lineage, ["a", "b", "c"])


def test_already_folded_journal_is_dropped(path: Path) -> None:
    # A commit that replaced the snapshot and was killed before removing the journal.
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})
    write_journal(path, load(path)["lineage"], 1, [put("b", rec(2, "failed"))])
    assert read_state(path, ENDPOINT).models["b"].status == "submitted"
    with StateStore(path, ENDPOINT):
        assert not sib(path, ".journal").exists()
    assert load(path)["serial"] == 2


def test_records_from_many_threads_are_all_kept(path: Path) -> None:
    threads, per_thread = 16, 40
    with StateStore(path, ENDPOINT) as store:
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                store.record(f"t{t}-{i}", rec(i, attempts=t))

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        expected = {f"t{t}-{i}" for t in range(threads) for i in range(per_thread)}
        assert set(store.state.models) == expected
        assert set(read_state(path, ENDPOINT).models) == expected
        lines = sib(path, ".journal").read_bytes().split(b"\n")
        assert len(lines) == 1 + threads * per_thread + 1  # header, records, final ""
    assert set(load(path)["models"]) == expected
    assert read_state(path, ENDPOINT).models["t5-7"] == rec(7, attempts=5)


def test_record_returns_once_written_and_a_background_sync_covers_every_line(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # record() returns once its line is in the file (a killed process keeps it); fdatasync
    # runs in a background thread, in batches, off the caller's path; closing waits for it.
    real = journal_module._datasync
    synced: list[int] = []  # journal size covered by each fdatasync, in order
    guard = threading.Lock()

    def slow_datasync(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.003)  # long enough for other threads to queue their lines behind
        real(fd)
        with guard:
            synced.append(size)

    monkeypatch.setattr(journal_module, "_datasync", slow_datasync)
    threads, per_thread = 8, 15
    missing: list[str] = []
    callers: set[str] = set()
    with StateStore(path, ENDPOINT) as store:
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                model_id = f"t{t}-{i}"
                store.record(model_id, rec(i))
                if f'"model_id":"{model_id}"'.encode() not in sib(path, ".journal").read_bytes():
                    missing.append(model_id)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        size = sib(path, ".journal").stat().st_size
        with guard:
            callers.update(t.name for t in threading.enumerate() if "journal-sync" in t.name)
    assert missing == []  # each line was in the file when record() returned
    assert callers == {"modelsync-journal-sync"}
    assert synced and max(synced) == size  # the last sync covered the whole journal
    assert len(synced) < threads * per_thread  # lines were synced in batches
    assert len(load(path)["models"]) == threads * per_thread


def test_a_failed_background_sync_refuses_later_records_and_the_commit_keeps_the_rest(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = threading.Event()
    synced = threading.Event()
    failed = threading.Event()

    def datasync(fd: int) -> None:
        if failing.is_set():
            failed.set()
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)
        synced.set()

    monkeypatch.setattr(journal_module, "_datasync", datasync)
    with StateStore(path, ENDPOINT) as store:
        store.record("first", rec(1))
        assert synced.wait(5)  # the syncer's first sync covered "first"
        failing.set()
        store.record("second", rec(2))  # written; its sync fails in the background
        assert failed.wait(5)
        deadline = time.monotonic() + 5
        error = None
        while error is None and time.monotonic() < deadline:
            try:
                store.record("later", rec(3))
            except StateError as exc:
                error = str(exc)
            time.sleep(0.01)
        assert error is not None
        assert "syncing it failed: Input/output error" in error
        failing.clear()
    # The commit writes a new snapshot (synced on its own): what was recorded is kept.
    models = read_state(path, ENDPOINT).models
    assert {"first", "second"} <= set(models)
    assert not sib(path, ".journal").exists()


def test_a_failed_write_still_leaves_the_lines_before_it_synced(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sync, real_write = journal_module._datasync, journal_module.write_all
    entered = threading.Event()
    release = threading.Event()
    sizes_at_start: list[int] = []  # journal size when each fdatasync began

    def held_sync(fd: int) -> None:
        sizes_at_start.append(os.fstat(fd).st_size)
        entered.set()
        assert release.wait(5)
        real_sync(fd)

    def failing_write(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "_datasync", held_sync)
    with StateStore(path, ENDPOINT) as store:
        store.record("a", rec(1))
        assert entered.wait(5)  # the first sync began with "a" only, and is held there
        store.record("b", rec(2))
        written = sib(path, ".journal").stat().st_size
        monkeypatch.setattr(journal_module, "write_all", failing_write)
        with pytest.raises(StateError, match="No space left on device"):
            store.record("c", rec(3))
        monkeypatch.setattr(journal_module, "write_all", real_write)
        release.set()
        deadline = time.monotonic() + 5
        while max(sizes_at_start) < written and time.monotonic() < deadline:
            time.sleep(0.01)
        # A sync began after "b" was written: the failed write did not end the syncing.
        assert max(sizes_at_start) == written
    assert {"a", "b"} <= set(read_state(path, ENDPOINT).models)


def test_record_keeps_a_copy_of_the_callers_dicts(path: Path) -> None:
    request = {"url": "org/a"}
    with StateStore(path, ENDPOINT) as store:
        store.record("a", ModelRecord("sha256:1", request, "pending"))
        request["url"] = "changed"
        assert store.state.models["a"].request == {"url": "org/a"}
    assert load(path)["models"]["a"]["request"] == {"url": "org/a"}


# --------------------------------------------------------------------------- untrusted


def _valid_snapshot(path: Path) -> bytes:
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})  # so that a backup exists
    return path.read_bytes()


def _edit(data: bytes, **changes: Any) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


UNTRUSTED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda d: b"", "is empty"),
    "blank": (lambda d: b"  \n", "is empty"),
    "truncated": (lambda d: d[: len(d) // 2], "is not valid JSON"),
    "not json": (lambda d: b"state: yes\n", "is not valid JSON"),
    "not utf8": (lambda d: b'{"\xff": 1}', "is not valid JSON"),
    "duplicate key": (lambda d: d.replace(b'"serial"', b'"serial": 1, "serial"'), "duplicate"),
    "not an object": (lambda d: b"[]\n", "does not hold a JSON object (found a list)"),
    "null": (lambda d: b"null", "does not hold a JSON object"),
    "no version": (lambda d: d.replace(b'"format_version"', b'"fv"'), "no format_version"),
    "newer version": (lambda d: _edit(d, format_version=2), "format_version 2"),
    "no lineage": (lambda d: _edit(d, lineage=""), "lineage"),
    "bad serial": (lambda d: _edit(d, serial=-1), "serial -1"),
    "bad models": (lambda d: _edit(d, models=[]), "models that are not an object"),
    "unknown top field": (lambda d: _edit(d, extra=1), "unknown field(s) 'extra'"),
    "bad status": (
        lambda d: d.replace(b'"submitted"', b'"done"', 1),
        "models['a'].status: 'done' is not one of submitted, failed, pending",
    ),
    "bad attempts": (lambda d: d.replace(b'"attempts":1', b'"attempts":"1"', 1), "attempts"),
    "record not an object": (
        lambda d: _edit(d, models={"a": "sha256:1"}),
        "models['a']: expected an object, found a string",
    ),
    "record field missing": (
        lambda d: _edit(d, models={"a": {"status": "submitted", "request": {}}}),
        "missing field 'fingerprint'",
    ),
}


@pytest.mark.parametrize("case", sorted(UNTRUSTED))
def test_untrusted_state_is_refused_with_a_recovery_hint(path: Path, case: str) -> None:
    make, expected = UNTRUSTED[case]
    bad = make(_valid_snapshot(path))
    path.write_bytes(bad)
    for attempt in (lambda: read_state(path, ENDPOINT), lambda: StateStore(path, ENDPOINT)):
        with pytest.raises(StateError) as info:
            if isinstance(opened := attempt(), StateStore):
                with opened:
                    pass
        message = str(info.value)
        assert info.value.exit_code == ExitCode.STATE
        assert expected in message
        assert f"state {path} " in message
        assert "would submit every model again" in message
        # A backup exists, so the hint is to restore it.
        assert message.endswith(
            f"; restore the previous snapshot with `cp {sib(path, '.backup')} {path}`,"
            " or pass --state to use another state"
        )
    assert path.read_bytes() == bad  # nothing was rewritten


def test_untrusted_state_without_backup_points_to_state_commands(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(StateError, match="is empty") as info:
        read_state(path, ENDPOINT)
    assert str(info.value) == (
        f"state {path} is empty; modelsync will not read it as 'nothing submitted', which"
        f" would submit every model again; restore {path} from version control or a copy,"
        " or pass --state to use another state; to rebuild it, move it away and run"
        " `modelsync state adopt ID...` for the models already on the account"
    )


def test_endpoint_mismatch_names_both_endpoints(path: Path) -> None:
    apply(path, {"a": rec(1)})
    other = "http://127.0.0.1:8080/api/v3/load_model"
    for attempt in (lambda: read_state(path, other), lambda: StateStore(path, other).__enter__()):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value) == (
            f"state {path} was written for endpoint {ENDPOINT}, but this run targets {other};"
            f" pass --endpoint {ENDPOINT} to use this state, or pass --state to keep a"
            " separate state per endpoint"
        )
    # The failed store released its lock.
    with StateStore(path, ENDPOINT):
        pass


def test_lineage_different_from_the_backup_is_refused(tmp_path: Path, path: Path) -> None:
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})
    other = tmp_path / "other" / "staging.state.json"
    apply(other, {"a": rec(1)}, endpoint=ENDPOINT)
    path.write_bytes(other.read_bytes())  # someone copied the wrong state over this one
    with pytest.raises(StateError) as info:
        read_state(path, ENDPOINT)
    message = str(info.value)
    backup = sib(path, ".backup")
    assert message == (
        f"state {path} has lineage {load(other)['lineage']}, but its backup {backup} has"
        f" lineage {load(backup)['lineage']}: the state was replaced by one that belongs to"
        f" another state; if the backup is right, restore it with `cp {backup} {path}`;"
        f" if {path} is the state you mean, remove {backup}; or pass --state to use another"
        " state"
    )
    assert load(other)["lineage"] != load(backup)["lineage"]
    with pytest.raises(StateError, match="lineage"), StateStore(path, ENDPOINT):
        pass


def test_missing_state_with_a_backup_is_refused(path: Path) -> None:
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})
    path.unlink()
    for attempt in (
        lambda: read_state(path, ENDPOINT),
        lambda: StateStore(path, ENDPOINT).__enter__(),
    ):
        with pytest.raises(StateError) as info:
            attempt()
        message = str(info.value)
        assert f"state {path} is missing but its backup" in message
        assert message.endswith(
            f"; restore it with `cp {sib(path, '.backup')} {path}`,"
            " or pass --state to use another state"
        )
    assert not path.exists()


def test_missing_state_with_a_journal_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    write_journal(path, "6f1c0000-0000-4000-8000-000000000000", 0, [put("a", rec(1))])
    with pytest.raises(StateError) as info:
        read_state(path, ENDPOINT)
    journal = sib(path, ".journal")
    assert str(info.value) == (
        f"state {path} is missing but its journal {journal} exists (results of a run that"
        " did not finish); restore the state file from a copy, or pass --state to use"
        f" another state; remove {journal} only if you mean to start from nothing (every"
        " model will be submitted again)"
    )
    with pytest.raises(StateError, match="is missing"), StateStore(path, ENDPOINT):
        pass
    assert not path.exists()


def test_journal_of_another_lineage_is_refused(path: Path) -> None:
    apply(path, {"a": rec(1)})
    write_journal(path, "00000000-0000-4000-8000-000000000000", 1, [put("b", rec(2))])
    with pytest.raises(StateError, match="belongs to another state") as info:
        read_state(path, ENDPOINT)
    assert str(sib(path, ".journal")) in str(info.value)


def test_journal_ahead_of_the_snapshot_is_refused(path: Path) -> None:
    apply(path, {"a": rec(1)})
    write_journal(path, load(path)["lineage"], 5, [put("b", rec(2))])
    with pytest.raises(StateError, match=r"continues serial 5, but state .* is at serial 1"):
        read_state(path, ENDPOINT)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (b'{"op": "begin"}\n', "line 1 is damaged"),
        (b'garbage\n{"op": "del", "model_id": "a"}\n', "line 2 is damaged .not JSON: column 1"),
        (b'{"op": "frobnicate", "model_id": "a"}\n{"op": "del", "model_id": "a"}\n', "line 2"),
        (b'{"op": "put", "model_id": "a", "record": {}}\n', "missing field 'fingerprint'"),
        (b'{"op": "del", "mod\n{"op": "del", "model_id": "a"}\n', "line 2 is damaged"),
    ],
)
def test_damaged_journal_is_refused(path: Path, lines: bytes, expected: str) -> None:
    apply(path, {"a": rec(1)})
    journal = sib(path, ".journal")
    if lines.startswith(b'{"op": "begin"}'):
        journal.write_bytes(lines)
    else:
        write_journal(path, load(path)["lineage"], 1, [])
        journal.write_bytes(journal.read_bytes() + lines)
    with pytest.raises(StateError, match=expected) as info:
        read_state(path, ENDPOINT)
    assert "move it away" in str(info.value)


# --------------------------------------------------------------------------- permissions


def test_state_folder_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "manifests"
    blocker.write_text("a file, not a folder")
    path = blocker / ".modelsync" / "prod.state.json"
    with pytest.raises(StateError, match="cannot create the state folder") as info:
        StateStore(path, ENDPOINT).__enter__()
    assert str(blocker / ".modelsync") in str(info.value)
    with pytest.raises(StateError, match=f"cannot read state {path}: Not a directory"):
        read_state(path, ENDPOINT)


def test_state_path_that_is_a_folder_is_a_state_error(path: Path) -> None:
    path.mkdir(parents=True)
    with pytest.raises(StateError, match=f"cannot read state {path}"):
        read_state(path, ENDPOINT)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_is_a_state_error(path: Path) -> None:
    apply(path, {"a": rec(1)})
    path.parent.chmod(0o500)
    try:
        with pytest.raises(StateError, match="not writable") as info:
            StateStore(path, ENDPOINT).__enter__()
        assert str(path.parent) in str(info.value)
        path.chmod(0o000)
        with pytest.raises(StateError, match=f"cannot read state {path}"):
            read_state(path, ENDPOINT)
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)


def test_failed_snapshot_write_keeps_the_journal(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(path, {"a": rec(1)})
    real_replace = os.replace

    def refuse(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StateError) as info, StateStore(path, ENDPOINT) as store:
        store.record("b", rec(2))
    message = str(info.value)
    assert f"cannot write {path}: Permission denied" in message
    assert f"kept in {sib(path, '.journal')}" in message
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert sorted(read_state(path, ENDPOINT).models) == ["a", "b"]
    with StateStore(path, ENDPOINT):
        pass
    assert sorted(load(path)["models"]) == ["a", "b"]


# --------------------------------------------------------------------------- lock


def test_second_store_in_process_is_locked_out(path: Path) -> None:
    with StateStore(path, ENDPOINT, command="modelsync apply manifests/prod.yaml"):
        started = time.monotonic()
        with pytest.raises(StateLockedError) as info:
            StateStore(path, ENDPOINT).__enter__()
        assert time.monotonic() - started < 1
        message = str(info.value)
        assert info.value.exit_code == ExitCode.STATE
        assert message.startswith(f"state {path} is locked by pid {os.getpid()} (")
        assert '"modelsync apply manifests/prod.yaml") since 20' in message
        assert message.endswith("; wait for it, or pass --lock-timeout SECONDS")


def test_lock_without_info_names_another_process(path: Path) -> None:
    path.parent.mkdir(parents=True)
    holder = filelock.FileLock(str(sib(path, ".lock")))
    sib(path, ".lock.info").write_text("{not json")
    with holder:
        with pytest.raises(StateLockedError, match="is locked by another process;"):
            StateStore(path, ENDPOINT).__enter__()
        sib(path, ".lock.info").unlink()
        with pytest.raises(StateLockedError, match="is locked by another process "):
            StateStore(path, ENDPOINT, lock_timeout=0.2).__enter__()


def test_stale_lock_info_does_not_block(path: Path) -> None:
    path.parent.mkdir(parents=True)
    stale = {"pid": 999999, "user": "x", "host": "y", "command": "c", "started_at": "s"}
    sib(path, ".lock.info").write_text(json.dumps(stale))
    with StateStore(path, ENDPOINT) as store:
        store.record("a", rec(1))
    assert not sib(path, ".lock.info").exists()


def test_lock_info_command_is_redacted(path: Path) -> None:
    redact.register_secret("hunter2-secret")
    with StateStore(path, ENDPOINT, command="modelsync apply --token hunter2-secret m.yaml"):
        info = json.loads(sib(path, ".lock.info").read_text())
        assert info["command"] == "modelsync apply --token *** m.yaml"
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["started_at"].endswith("Z")


# --------------------------------------------------------------------------- processes


class Child:
    """A tests/state_child.py process whose stdout lines are collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, line: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"child never printed {line!r}: {self.lines} {err}")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def stop(self) -> str:
        """Wait for the child to exit (its stdin is closed), return its stderr."""
        self.proc.wait(timeout=15)
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_recorded_result(
    path: Path, children: list[Child]
) -> None:
    rnd = random.Random(20261125)
    reported: set[str] = set()
    lineage: str | None = None
    serial = 0
    runs_with_records = 0
    started = time.monotonic()
    kills = 0
    while kills < 32:
        assert time.monotonic() - started < 40, "kill test took too long"
        child = Child("record", str(path), ENDPOINT, f"r{kills}")
        children.append(child)
        # From spawn: the early ones land in start-up and in the fold of the last journal.
        time.sleep(rnd.uniform(0.0, 0.5))
        child.kill()
        kills += 1
        assert child.proc.returncode == -signal.SIGKILL, child.proc.stderr
        new = {line.split()[1] for line in child.lines if line.startswith("recorded ")}
        runs_with_records += bool(new)
        reported |= new

        state = read_state(path, ENDPOINT)
        missing = reported - set(state.models)
        assert not missing, f"kill {kills}: lost {sorted(missing)}"
        assert all(state.models[m].status == "submitted" for m in reported)
        if state.exists:
            lineage = lineage or state.lineage
            assert state.lineage == lineage
        assert state.serial >= serial
        serial = state.serial

        # The lock died with the child. Every other time, a full store takes it (and folds
        # the journal); otherwise the next child meets the leftover journal itself.
        if kills % 2:
            with StateStore(path, ENDPOINT) as store:
                assert reported <= set(store.state.models)
                assert store.state.serial >= serial
                serial = store.state.serial
        else:
            with filelock.FileLock(str(sib(path, ".lock"))).acquire(timeout=0):
                pass

    assert runs_with_records >= 10, "the kills never landed while results were recorded"
    with StateStore(path, ENDPOINT) as store:
        assert reported <= set(store.state.models)
    assert reported <= set(load(path)["models"])
    assert not sib(path, ".journal").exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_lock_held_by_another_process(path: Path, children: list[Child]) -> None:
    command = "modelsync apply manifests/prod.yaml --secret-flag s3cr3t-value"
    holder = Child("hold", str(path), ENDPOINT, command, env={"STATE_CHILD_SECRET": "s3cr3t-value"})
    children.append(holder)
    holder.wait_for("locked")

    started = time.monotonic()
    with pytest.raises(StateLockedError) as info:
        StateStore(path, ENDPOINT).__enter__()
    assert time.monotonic() - started < 1
    held = json.loads(sib(path, ".lock.info").read_text())
    message = str(info.value)
    assert f"is locked by pid {holder.proc.pid} ({held['user']}@{held['host']}, " in message
    assert held["host"] == socket.gethostname()
    assert '"modelsync apply manifests/prod.yaml --secret-flag ***")' in message
    assert "s3cr3t" not in message
    assert "--lock-timeout SECONDS" in message

    # With a timeout it waits, and gets the lock once the holder lets go.
    assert holder.proc.stdin is not None
    timer = threading.Timer(0.5, holder.proc.stdin.close)
    timer.start()
    started = time.monotonic()
    with StateStore(path, ENDPOINT, lock_timeout=10) as store:
        waited = time.monotonic() - started
        store.record("a", rec(1))
    timer.join()
    assert 0.4 < waited < 5
    assert holder.stop() == ""
    assert holder.proc.returncode == 0

    # A killed holder frees the lock at once, whatever lock-info it left behind.
    killed = Child("hold", str(path), ENDPOINT, "modelsync apply")
    children.append(killed)
    killed.wait_for("locked")
    killed.kill()
    assert json.loads(sib(path, ".lock.info").read_text())["pid"] == killed.proc.pid
    started = time.monotonic()
    with StateStore(path, ENDPOINT) as store:
        assert time.monotonic() - started < 1
        assert list(store.state.models) == ["a"]
