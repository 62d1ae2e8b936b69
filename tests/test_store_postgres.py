"""The PostgreSQL state (DESIGN §2b) against a real server (tests/pg.py: a database per run).

The contract every backend passes is tests/test_store_contract.py; this file holds what is
PostgreSQL's own: the URL and its masking, the tables and their creation, the connections'
settings, the lease and its fence, the fallback journal, migrate, unlock and ddl. The
promises over real HTTP, with ``python -m modelsync apply`` as processes, are at the end
(marked slow).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsync.errors import ExitCode, StateError, StateLockedError, UsageError
from modelsync.records import ModelRecord
from modelsync.store import StateBackend, open_state
from modelsync.store import postgres_admin as admin
from modelsync.store.postgres_sql import parse_target
from tests.pg import (
    Proxy,
    pg,
    pg_database,
    pg_location,
    pg_schema,
    with_params,
)

__all__ = ["pg", "pg_database", "pg_location", "pg_schema"]  # fixtures of tests.pg used here

ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
PASSWORD = "s3cret-Pa55word"


def rec(n: int = 1, status: str = "submitted", **extra: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "fingerprint": f"sha256:{n:064x}",
        "request": {"url": f"org/m{n}", "model_format": "diffusers"},
        "status": status,
        "attempts": 1,
    }
    fields.update(extra)
    return ModelRecord(**fields)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return tmp_path / "manifests" / "prod.yaml"


@pytest.fixture
def connect(pg_location: str, manifest: Path) -> Callable[..., StateBackend]:
    def make(location: str = pg_location, **options: Any) -> StateBackend:
        endpoint = options.pop("endpoint", ENDPOINT)
        return open_state(location, manifest_path=manifest, endpoint=endpoint, **options)

    return make


def writer(backend: StateBackend, command: str = "test", lock_timeout: float = 0) -> Any:
    return backend.open_writer(lock_timeout=lock_timeout, command=command)


def state_row(conn: Any, schema: str, name: str = "prod") -> dict[str, Any]:
    cur = conn.execute(f'SELECT * FROM "{schema}".states WHERE name = %s', (name,))
    names = [d.name for d in cur.description]
    row = cur.fetchone()
    return dict(zip(names, row, strict=True)) if row else {}


def model_rows(conn: Any, schema: str, name: str = "prod") -> dict[str, Any]:
    rows = conn.execute(
        f'SELECT model_id, record, written_epoch FROM "{schema}".models WHERE state = %s',
        (name,),
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def backend_pids(conn: Any, like: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (like,)
    ).fetchall()
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- the URL


def test_url_parameters_of_modelsync_are_taken_out_and_passwords_masked() -> None:
    url = (
        f"postgresql://alice:{PASSWORD}@db.example:6432/ops?sslmode=require&schema=ms_state"
        f"&name=team-a&lease_ttl=7.5&application_name=x&password={PASSWORD}"
    )
    target = parse_target(url, "manifests/prod.yaml")
    assert (target.schema, target.name, target.lease_ttl) == ("ms_state", "team-a", 7.5)
    assert target.conninfo == (
        f"postgresql://alice:{PASSWORD}@db.example:6432/ops?sslmode=require"
        f"&application_name=x&password={PASSWORD}"
    )
    assert PASSWORD not in target.location
    assert target.location == (
        "postgresql://alice:***@db.example:6432/ops?sslmode=require&schema=ms_state"
        "&name=team-a&lease_ttl=7.5&application_name=x&password=***"
    )
    # The name defaults to the manifest's stem, and the location says it.
    plain = parse_target("postgres://db.example/ops", "manifests/prod.yaml")
    assert (plain.schema, plain.name) == ("modelsync", "prod")
    assert plain.location == "postgres://db.example/ops?name=prod"
    assert plain.lock_key != parse_target("postgres://db.example/ops?name=b", "x").lock_key


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("schema=public", "never in public or a system schema"),
        ("schema=PG_catalog", "never in public or a system schema"),
        ("schema=1abc", "is not a plain identifier"),
        ('schema=a"b', "is not a plain identifier"),
        ("lease_ttl=0", "lease_ttl='0' must be a number of seconds"),
        ("skip_schema_creation=maybe", "must be true or false"),
    ],
)
def test_bad_url_parameters_are_refused_with_exit_4(query: str, words: str) -> None:
    with pytest.raises(StateError) as info:
        parse_target(f"postgresql://u:{PASSWORD}@h/db?{query}", "prod.yaml")
    assert info.value.exit_code == ExitCode.STATE
    assert words in str(info.value)
    assert PASSWORD not in str(info.value)


def test_a_missing_driver_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli: Any
) -> None:
    for name in [m for m in sys.modules if m.startswith("modelsync.store.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    manifest = tmp_path / "prod.yaml"
    manifest.write_text("version: 1\nmodels: []\n", encoding="utf-8")
    url = f"postgresql://u:{PASSWORD}@127.0.0.1/db?password={PASSWORD}"
    code, out, err = cli("plan", manifest, "--state", url)
    assert code == 4, err
    assert "a PostgreSQL state needs psycopg 3: pip install 'modelsync[postgres]'" in err
    assert err.startswith("Error: --state postgresql://u:***@127.0.0.1/db?password=***: ")
    assert PASSWORD not in out + err


def test_an_unreachable_server_is_exit_4_and_never_shows_the_password(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "prod.yaml"
    manifest.write_text("version: 1\nmodels: []\n", encoding="utf-8")
    monkeypatch.setenv("PGPASSWORD", "env-" + PASSWORD)
    monkeypatch.setenv("MODELSYNC_API_KEY", "test-key")
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/db?connect_timeout=3"
    for command in ("plan", "apply"):
        code, out, err = cli(command, manifest, "--state", url)
        assert code == 4, err
        assert "cannot connect to state postgresql://postgres:***@127.0.0.1:1/db" in err
        assert "Connection refused" in err
        assert PASSWORD not in out + err


# --------------------------------------------------------------------------- the tables


def test_reading_creates_nothing(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str
) -> None:
    state = connect().read()
    assert not state.exists and dict(state.models) == {}
    found = pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)).fetchone()
    assert found is None


def test_concurrent_first_runs_create_the_tables_once(
    pg_location: str,
    manifest: Path,
    pg: Any,
    pg_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 8
    barrier = threading.Barrier(runs)
    errors: list[BaseException] = []

    def first_run(i: int) -> None:
        backend = open_state(
            with_params(pg_location, name=f"s{i}"), manifest_path=manifest, endpoint=ENDPOINT
        )
        barrier.wait()
        try:
            with writer(backend) as w:
                w.record("a", rec(i))
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="modelsync"):
        threads = [threading.Thread(target=first_run, args=(i,)) for i in range(runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    created = [r for r in caplog.records if r.getMessage().startswith("Created the modelsync")]
    assert len(created) == 1
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".schema_version').fetchone() == (1,)
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".states').fetchone() == (runs,)


def test_skip_schema_creation_refuses_missing_tables_until_the_ddl_is_run(
    connect: Callable[..., StateBackend], pg_location: str, manifest: Path, pg: Any, pg_schema: str
) -> None:
    for backend in (
        connect(skip_schema_creation=True),
        connect(with_params(pg_location, skip_schema_creation="true")),
    ):
        with pytest.raises(StateError) as info, writer(backend):
            pass
        message = str(info.value)
        assert f"the tables are not in schema {pg_schema}" in message
        assert "'modelsync state ddl MANIFEST --state URL'" in message
        assert not backend.read().exists  # reading needs no tables
    assert (
        pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)).fetchone() is None
    )
    text = admin.ddl(pg_location, manifest)
    assert text.startswith(f"-- modelsync state tables, schema version 1, in schema {pg_schema}.")
    assert "BEGIN;\nSELECT pg_advisory_xact_lock(" in text and text.endswith("COMMIT;\n")
    pg.execute(text)  # what a DBA does with: modelsync state ddl ... | psql
    with writer(connect(skip_schema_creation=True)) as w:
        w.record("a", rec(1))
    assert list(connect().read().models) == ["a"]


def test_ddl_needs_a_postgresql_state(manifest: Path) -> None:
    with pytest.raises(UsageError, match="state ddl prints the tables of a PostgreSQL state"):
        admin.ddl(str(manifest.with_suffix(".state.json")), manifest)
    assert '"custom_s".states' in admin.ddl("postgresql:///x?schema=custom_s", manifest)


def test_tables_newer_than_this_modelsync_are_refused(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str
) -> None:
    with writer(connect()) as w:
        w.record("a", rec(1))
    pg.execute(f'INSERT INTO "{pg_schema}".schema_version (version) VALUES (2)')
    for attempt in (connect().read, lambda: writer(connect()).__enter__()):
        with pytest.raises(StateError, match="have schema version 2, but this modelsync knows"):
            attempt()


def test_a_state_of_another_format_version_is_untrusted(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str
) -> None:
    with writer(connect()) as w:
        w.record("a", rec(1))
    pg.execute(f'UPDATE "{pg_schema}".states SET format_version = 2')
    with pytest.raises(StateError) as info:
        connect().read()
    message = str(info.value)
    assert "has format_version 2, but this modelsync reads format_version 1" in message
    assert "will not read it as 'nothing submitted'" in message
    assert f"SELECT * FROM \"{pg_schema}\".states WHERE name = 'prod'" in message


# --------------------------------------------------------------------------- connections


def test_connections_name_themselves_and_set_timeouts(
    connect: Callable[..., StateBackend], pg: Any
) -> None:
    from modelsync.store import postgres_conn

    backend = connect()
    with writer(backend) as w:
        w.record("a", rec(1))
        pids = backend_pids(pg, f"modelsync write prod pid {os.getpid()}")
        assert len(pids) == 1
    target = backend.target  # type: ignore[attr-defined]
    params = postgres_conn.conninfo(target, "read")
    assert params["keepalives"] == 1 and params["keepalives_idle"] == 10
    assert params["connect_timeout"] == 10 and params["tcp_user_timeout"] == 30000
    conn = postgres_conn.connect(target, "read")
    try:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("10s",)
        assert conn.execute("SHOW application_name").fetchone()[0].startswith("modelsync read")
    finally:
        conn.close()
    # The URL's own options are kept beside modelsync's.
    own = parse_target(with_params("postgresql:///x", options="-c work_mem=8MB"), "p.yaml")
    assert postgres_conn.conninfo(own, "read")["options"].endswith(" -c work_mem=8MB")


def test_libpq_environment_and_service_files_work(
    pg_database: str,
    pg_schema: str,
    manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = urllib.parse.urlsplit(pg_database)
    env = {
        "PGHOST": parts.hostname or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "PGUSER": parts.username or "postgres",
        "PGDATABASE": parts.path.lstrip("/"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    by_env = open_state(
        f"postgresql://?schema={pg_schema}&sslmode=disable",
        manifest_path=manifest,
        endpoint=ENDPOINT,
    )
    with writer(by_env) as w:
        w.record("a", rec(1))
    for key in env:
        monkeypatch.delenv(key)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[modelsync-test]\n"
        + "".join(f"{k[2:].lower()}={v}\n" for k, v in env.items()).replace("database=", "dbname="),
        encoding="utf-8",
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    by_service = open_state(
        f"postgresql://?service=modelsync-test&schema={pg_schema}",
        manifest_path=manifest,
        endpoint=ENDPOINT,
    )
    assert list(by_service.read().models) == ["a"]


def test_a_record_is_one_statement(connect: Callable[..., StateBackend]) -> None:
    with writer(connect()) as w:
        conn = w._conn
        real = conn.execute
        calls: list[str] = []

        def counting(query: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(str(query))
            return real(query, *args, **kwargs)

        conn.execute = counting
        for i in range(50):
            w.record(f"m{i}", rec(i, "pending"))
            w.record(f"m{i}", rec(i))
        w.forget(["m1", "m2"])
        assert len(calls) == 101
        w.record("m3", rec(3))  # unchanged: nothing to write
        assert len(calls) == 101


def test_nul_characters_are_kept_as_replacement_characters(
    connect: Callable[..., StateBackend],
) -> None:
    with writer(connect()) as w:
        w.record("a", rec(1, response={"message": "bad\x00byte"}))
        assert w.state.models["a"].response == {"message": "bad\ufffdbyte"}
    assert connect().read().models["a"].response == {"message": "bad\ufffdbyte"}


# --------------------------------------------------------------------------- the lease


def test_the_locked_error_names_the_holder_its_epoch_and_the_way_out(
    connect: Callable[..., StateBackend], manifest: Path
) -> None:
    command = "modelsync apply manifests/prod.yaml"
    with writer(connect(), command) as w:
        w.record("a", rec(1))
        with pytest.raises(StateLockedError) as info, writer(connect(), "modelsync plan"):
            pass
    message = str(info.value)
    assert f"is locked by pid {os.getpid()} (" in message
    assert f'@{os.uname().nodename}, "{command}") since 20' in message
    assert ", lease epoch 1 until 20" in message
    assert (
        f"(if that process is gone for good: modelsync state unlock {manifest} --epoch 1)"
        in message
    )
    assert message.endswith("; wait for it, or pass --lock-timeout SECONDS")


def test_a_taken_over_lease_fences_the_writer_and_keeps_what_arrives(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str, manifest: Path
) -> None:
    with writer(connect()) as w:
        w.record("a", rec(1))
        # Another run (or an operator) takes the state over: the epoch moves on.
        pg.execute(f'UPDATE "{pg_schema}".states SET lock_epoch = lock_epoch + 1')
        before = model_rows(pg, pg_schema)
        with pytest.raises(StateError) as info:
            w.record("b", rec(2, "pending"))  # the next request would follow this record
        assert info.value.exit_code == ExitCode.STATE
        message = str(info.value)
        assert "this run lost its lease (epoch 1; the state's lease is now at epoch 2" in message
        assert "cannot write the state and sends nothing more" in message
        fallback = manifest.parent / ".modelsync" / f"prod.{pg_schema}.pg-fallback.journal"
        assert f"results that still arrive are kept in {fallback}" in message
        # A result of a request that was already in flight is kept locally, not written.
        w.record("c", rec(3))
        w.forget(["a"])
        assert model_rows(pg, pg_schema) == before
        with pytest.raises(StateError, match="lost its lease"):
            w.commit()
    assert fallback.is_file() and oct(fallback.stat().st_mode & 0o777) == "0o600"
    lines = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert [line.get("op") for line in lines] == [None, "put", "del"]
    assert lines[0]["name"] == "prod" and lines[1]["epoch"] == 1
    # plan sees them at once; the next run folds them in and removes the file.
    assert sorted(connect().read().models) == ["c"]
    with writer(connect()) as w2:
        assert sorted(w2.state.models) == ["c"]
    assert not fallback.exists()
    assert sorted(model_rows(pg, pg_schema)) == ["c"]
    assert state_row(pg, pg_schema)["serial"] == 2


def test_folding_keeps_rows_that_a_later_run_wrote(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str, manifest: Path
) -> None:
    with writer(connect()) as w:
        w.record("x", rec(1))
    lineage = connect().read().lineage
    with writer(connect()) as w:  # epoch 2 writes x again
        w.record("x", rec(1, attempts=9))
    fallback = manifest.parent / ".modelsync" / f"prod.{pg_schema}.pg-fallback.journal"
    fallback.parent.mkdir(parents=True)
    header = {"modelsync": "pg-fallback", "version": 1, "lineage": lineage, "endpoint": ENDPOINT}
    lines = [
        header,
        {"op": "put", "epoch": 1, "model_id": "x", "record": rec(1, attempts=5).to_json()},
        {"op": "put", "epoch": 1, "model_id": "y", "record": rec(2).to_json()},
    ]
    torn = json.dumps({"op": "put", "epoch": 1, "model_id": "z"})[:20]
    fallback.write_text("".join(json.dumps(x) + "\n" for x in lines) + torn)
    assert connect().read().models["x"].attempts == 9
    with writer(connect()) as w:
        assert w.state.models["x"].attempts == 9  # written by epoch 2: kept
        assert w.state.models["y"] == rec(2)  # nobody wrote it since: folded in
        assert "z" not in w.state.models  # a torn last line is ignored
    assert not fallback.exists()


def test_a_damaged_or_foreign_fallback_journal_is_untrusted(
    connect: Callable[..., StateBackend], pg_schema: str, manifest: Path
) -> None:
    fallback = manifest.parent / ".modelsync" / f"prod.{pg_schema}.pg-fallback.journal"
    fallback.parent.mkdir(parents=True)
    header = {"modelsync": "pg-fallback", "version": 1, "lineage": "other", "endpoint": ENDPOINT}
    put = {"op": "put", "epoch": 1, "model_id": "y", "record": rec(2).to_json()}
    fallback.write_text(json.dumps(header) + "\n" + json.dumps(put) + "\n")
    with pytest.raises(StateError, match="is not in the database, but its fallback journal"):
        connect().read()
    fallback.unlink()
    with writer(connect()) as w:
        w.record("a", rec(1))
    fallback.write_text(json.dumps(header) + "\n" + json.dumps(put) + "\n")
    with pytest.raises(StateError) as info:
        connect().read()
    assert f"but its fallback journal {fallback} has lineage other" in str(info.value)
    fallback.write_text(json.dumps(header) + "\n{not json\n" + json.dumps(put) + "\n")
    with pytest.raises(StateError, match="has a damaged line 2"), writer(connect()) as w:
        pass
    assert w is not None


def test_a_terminated_session_records_what_was_in_flight_then_stops(
    connect: Callable[..., StateBackend], pg: Any, pg_schema: str
) -> None:
    with pytest.raises(StateError) as at_exit, writer(connect()) as w:
        w.record("a", rec(1, "pending"))
        (pid,) = backend_pids(pg, f"modelsync write prod pid {os.getpid()}")
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        w.record("a", rec(1))  # in flight when the session died: still recorded
        with pytest.raises(StateError) as info:
            w.record("b", rec(2, "pending"))
        assert "the connection to the database was lost (" in str(info.value)
        assert "this run's lease (epoch 1) still held when it reconnected" in str(info.value)
        w.record("c", rec(3))
        w._told = False  # as if the run had not heard it: leaving says it again
    assert "a run sends nothing more after a lost connection" in str(at_exit.value)
    assert sorted(model_rows(pg, pg_schema)) == ["a", "c"]
    assert model_rows(pg, pg_schema)["a"][0]["status"] == "submitted"
    assert state_row(pg, pg_schema)["lease_expires_at"] is None  # released on the new session


@pytest.mark.slow
def test_a_network_cut_keeps_results_locally_and_the_next_run_folds_them_in(
    pg_database: str, pg_schema: str, manifest: Path, pg: Any, connect: Callable[..., StateBackend]
) -> None:
    parts = urllib.parse.urlsplit(pg_database)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    through = with_params(proxy.url(pg_database), schema=pg_schema, connect_timeout="2")
    started = time.monotonic()
    with writer(connect(through)) as w:
        w.record("a", rec(1, "pending"))
        w.record("b", rec(2, "pending"))
        proxy.cut()
        w.record("a", rec(1))  # the answer of a request in flight: kept locally
        with pytest.raises(StateError) as info:
            w.record("c", rec(3, "pending"))
        assert "the database is unreachable (" in str(info.value)
        assert "this run sends nothing more; results that still arrive are kept in" in str(
            info.value
        )
    assert time.monotonic() - started < 15
    assert model_rows(pg, pg_schema)["a"][0]["status"] == "pending"
    assert connect().read().models["a"].status == "submitted"  # plan folds it in memory
    # The cut session is gone at the server: the next run takes the state over at once.
    with writer(connect(), lock_timeout=10) as w2:
        assert w2.state.models["a"].status == "submitted"
        assert w2.state.models["b"].status == "pending"
    assert model_rows(pg, pg_schema)["a"][0]["status"] == "submitted"


@pytest.mark.slow
def test_the_heartbeat_keeps_a_short_lease(
    connect: Callable[..., StateBackend], pg_location: str
) -> None:
    short = with_params(pg_location, lease_ttl="1")
    with writer(connect(short)) as w:
        w.record("a", rec(1))
        time.sleep(2.5)  # more than two TTLs: only the heartbeat keeps it
        w.record("b", rec(2))
    assert sorted(connect().read().models) == ["a", "b"]


@pytest.mark.slow
def test_an_expired_lease_of_a_live_session_is_taken_over_and_fences_it(
    connect: Callable[..., StateBackend], pg_location: str, pg: Any, pg_schema: str
) -> None:
    short = with_params(pg_location, lease_ttl="1")
    w1 = writer(connect(short)).__enter__()
    try:
        w1.record("a", rec(1))
        w1._stop_beat.set()  # as if paused: its session (and session lock) stays alive
        w1._beat.join()
        with pytest.raises(StateLockedError):
            writer(connect(short)).__enter__()
        with writer(connect(short), lock_timeout=5) as w2:
            w2.record("b", rec(2))
        with pytest.raises(StateError, match="lost its lease"):
            w1.record("c", rec(3, "pending"))
    finally:
        w1.__exit__(None, None, None)
    assert sorted(model_rows(pg, pg_schema)) == ["a", "b"]


# --------------------------------------------------------------------------- unlock


def test_unlock_breaks_only_the_given_epoch_and_fences_its_holder(
    connect: Callable[..., StateBackend], manifest: Path
) -> None:
    with writer(connect()) as w:
        w.record("a", rec(1))
        with pytest.raises(StateLockedError) as info:
            admin.unlock(connect(), 7)
        assert "is held at lease epoch 1 by pid" in str(info.value)
        assert f"run 'modelsync state unlock {manifest} --epoch 1'" in str(info.value)
        unlocked = admin.unlock(connect(), 1)
        assert (unlocked.epoch, unlocked.new_epoch) == (1, 2)
        assert unlocked.holder.startswith(f"pid {os.getpid()} (")
        with pytest.raises(StateError, match="lost its lease"):
            w.record("b", rec(2, "pending"))
    with pytest.raises(StateError, match=r"is not locked \(its lease is free, at epoch 2\)"):
        admin.unlock(connect(), 2)
    with pytest.raises(UsageError, match="is a file: its lock is an OS lock"):
        admin.unlock(connect(str(manifest.with_suffix(".state.json"))), 1)


# --------------------------------------------------------------------------- migrate


def test_migrate_between_a_file_and_postgresql_keeps_lineage_serial_and_records(
    connect: Callable[..., StateBackend], tmp_path: Path
) -> None:
    source = connect(str(tmp_path / "prod.state.json"))
    for i in range(3):
        with writer(source) as w:
            w.record(f"m{i}", rec(i, response={"status": "success", "n": [i, None]}))
    original = source.read()
    assert original.serial == 3
    done = admin.migrate(source, connect(), lock_timeout=0, command="test")
    assert (done.lineage, done.serial, done.models) == (original.lineage, 3, 3)
    copied = connect().read()
    assert (copied.lineage, copied.serial, dict(copied.models)) == (
        original.lineage,
        3,
        dict(original.models),
    )
    back = connect(str(tmp_path / "back" / "prod.state.json"))
    admin.migrate(connect(), back, lock_timeout=0, command="test")
    again = back.read()
    assert (again.lineage, again.serial, dict(again.models)) == (
        original.lineage,
        3,
        dict(original.models),
    )
    # The copy goes on from there: the serial grows from the source's.
    with writer(connect()) as w:
        w.record("new", rec(9))
    assert connect().read().serial == 4


def test_migrate_refuses_a_non_empty_target_a_missing_source_and_itself(
    connect: Callable[..., StateBackend], tmp_path: Path, pg_location: str
) -> None:
    file_state = connect(str(tmp_path / "prod.state.json"))
    with pytest.raises(StateError, match="does not exist yet: nothing to migrate"):
        admin.migrate(file_state, connect(), lock_timeout=0, command="test")
    with writer(file_state) as w:
        w.record("a", rec(1))
    with writer(connect()) as w:
        w.record("b", rec(2))
    with pytest.raises(StateError, match=r"is not empty \(serial 1, 1 model\(s\)\)"):
        admin.migrate(file_state, connect(), lock_timeout=0, command="test")
    with pytest.raises(StateError, match=r"is not empty \(serial 1, 1 model\(s\)\)"):
        admin.migrate(connect(), file_state, lock_timeout=0, command="test")
    with pytest.raises(UsageError, match="names the state itself"):
        admin.migrate(connect(), connect(), lock_timeout=0, command="test")
    assert list(connect().read().models) == ["b"]
    assert list(file_state.read().models) == ["a"]


# --------------------------------------------------------------------------- over real HTTP
# ``python -m modelsync apply`` as processes, against the sandbox (in this process, so its
# counters and request log can be read) and the real database. Every child has a timeout.

KEY = "pg-e2e-sandbox-key-41c7"
CHILD_TIMEOUT = 60.0
PARALLELISM = 4
MODELS = 80
LATENCY_MS = 100


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Any]:
    from modelsync.sandbox import Sandbox, SandboxConfig

    box = Sandbox(
        SandboxConfig(
            port=0, api_key=KEY, latency_ms=LATENCY_MS, request_log=tmp_path / "requests.jsonl"
        )
    )
    box.start()
    yield box
    box.stop()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", MODELSYNC_API_KEY=KEY)
    return env


def modelsync(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "modelsync", *map(str, args)]


def apply_args(manifest: Path, sandbox: Any, state: str, *extra: str) -> list[str]:
    return [
        "apply",
        str(manifest),
        "--endpoint",
        sandbox.load_model_url,
        "--state",
        state,
        "--parallelism",
        str(PARALLELISM),
        "--deadline",
        "50",
        *extra,
    ]


def run(
    *args: str | Path, cwd: Path, timeout: float = CHILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        modelsync(*args),
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, shown(proc)
    return proc


def start(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        modelsync(*args),
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def finish(child: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = child.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"modelsync still running after {CHILD_TIMEOUT} s\n{out}\n{err}")
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    assert "Traceback" not in err, shown(proc)
    return proc


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def requests_by_model(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["path"] == "/api/v3/load_model" and entry.get("model_id"):
            counts[entry["model_id"]] = counts.get(entry["model_id"], 0) + 1
    return counts


def e2e_manifest(tmp_path: Path, count: int = MODELS) -> tuple[Path, list[str]]:
    from tests.helpers import numbered, write_models_manifest

    manifest = tmp_path / "manifests" / "prod.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return manifest, write_models_manifest(manifest, numbered(count))


def read_pg(location: str, manifest: Path, sandbox: Any) -> Any:
    return open_state(location, manifest_path=manifest, endpoint=sandbox.load_model_url).read()


def converge(
    manifest: Path, sandbox: Any, location: str, ids: list[str], tmp_path: Path, pg: Any
) -> subprocess.CompletedProcess[str]:
    """Run apply again: exit 0, every model on the sandbox and submitted in the state."""
    # The runner before has exited; its session ends a moment later (--lock-timeout is 0).
    wait_for(lambda: not backend_pids(pg, "modelsync apply %"), 10, "the last run's session")
    again = run(*apply_args(manifest, sandbox, location), cwd=tmp_path)
    assert again.returncode == 0, shown(again)
    state = read_pg(location, manifest, sandbox)
    assert sorted(state.models) == ids
    assert {r.status for r in state.models.values()} == {"submitted"}
    assert sorted(sandbox.models()) == ids
    assert sandbox.stats()["already_exists"] == 0
    return again


@pytest.mark.slow
def test_three_runners_at_once_one_runs_two_exit_4_naming_it(
    tmp_path: Path, sandbox: Any, pg_location: str, pg: Any, pg_schema: str
) -> None:
    manifest, ids = e2e_manifest(tmp_path, 2 * MODELS)  # long enough for all three to start
    args = apply_args(manifest, sandbox, pg_location)
    children = [start(*args, cwd=tmp_path) for _ in range(3)]  # a fresh schema: first runs
    done = [finish(child) for child in children]
    codes = sorted(p.returncode for p in done)
    assert codes == [0, 4, 4], "\n\n".join(shown(p) for p in done)
    (winner,) = [c for c, p in zip(children, done, strict=True) if p.returncode == 0]
    for proc in done:
        if proc.returncode == 4:
            assert f"is locked by pid {winner.pid} (" in proc.stderr, shown(proc)
            assert f'"modelsync apply {manifest} --endpoint' in proc.stderr, shown(proc)
            assert proc.stdout == ""  # refused before planning: nothing sent
    created = sum(p.stderr.count("Created the modelsync tables") for p in done)
    assert created == 1
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".schema_version').fetchone() == (1,)
    counts = requests_by_model(tmp_path / "requests.jsonl")
    assert sorted(counts) == ids and set(counts.values()) == {1}  # 0 duplicate requests
    assert sandbox.stats()["load_model"] == len(ids)
    print(f"\n[three runners] exits {[p.returncode for p in done]}, {len(ids)} requests")


@pytest.mark.slow
def test_kill_9_mid_run_then_the_next_run_converges_resending_at_most_what_was_in_flight(
    tmp_path: Path, sandbox: Any, pg_location: str, pg: Any
) -> None:
    manifest, ids = e2e_manifest(tmp_path)
    child = start(*apply_args(manifest, sandbox, pg_location), cwd=tmp_path)
    try:
        wait_for(lambda: sandbox.stats()["accepted"] >= 20, 30, "20 models accepted")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    wait_for(lambda: sandbox.stats()["in_flight"] == 0, 10, "the sandbox to go idle")
    # The dead process's session ends with it, and its session lock with it.
    wait_for(lambda: not backend_pids(pg, f"modelsync % pid {child.pid}"), 10, "its session")
    state = read_pg(pg_location, manifest, sandbox)
    pending = sorted(m for m, r in state.models.items() if r.status == "pending")
    assert len(pending) <= PARALLELISM, pending
    assert set(sandbox.models()) <= set(state.models)  # a pending row before each request
    sent_before = requests_by_model(tmp_path / "requests.jsonl")
    again = converge(manifest, sandbox, pg_location, ids, tmp_path, pg)
    assert f"{len(pending)} to retry" in again.stdout, shown(again)
    counts = requests_by_model(tmp_path / "requests.jsonl")
    resent = sorted(m for m in sent_before if counts[m] > sent_before[m])
    assert set(resent) <= set(pending), (resent, pending)
    assert sum(counts.values()) <= MODELS + PARALLELISM
    print(f"\n[kill -9] {len(pending)} pending at the kill, {len(resent)} re-sent: {resent}")


@pytest.mark.slow
def test_pg_terminate_backend_mid_run_stops_sending_exits_4_and_the_next_run_converges(
    tmp_path: Path, sandbox: Any, pg_location: str, pg: Any
) -> None:
    manifest, ids = e2e_manifest(tmp_path)
    child = start(*apply_args(manifest, sandbox, pg_location), cwd=tmp_path)
    wait_for(lambda: sandbox.stats()["accepted"] >= 20, 30, "20 models accepted")
    pids = backend_pids(pg, f"modelsync apply prod pid {child.pid}")
    assert pids, "the runner's session is not in pg_stat_activity"
    for pid in pids:
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
    at_kill = sandbox.stats()["load_model"]
    proc = finish(child)
    assert proc.returncode == 4, shown(proc)
    assert "the connection to the database was lost (" in proc.stderr, shown(proc)
    assert "a run sends nothing more after a lost connection" in proc.stderr
    after = sandbox.stats()["load_model"]
    assert after - at_kill <= PARALLELISM, (at_kill, after)  # at most what was in flight
    assert after < MODELS
    converge(manifest, sandbox, pg_location, ids, tmp_path, pg)
    counts = requests_by_model(tmp_path / "requests.jsonl")
    assert sum(counts.values()) <= MODELS + PARALLELISM
    print(f"\n[terminate] {after - at_kill} request(s) after the kill; sent {after} of {MODELS}")


@pytest.mark.slow
def test_a_runner_whose_lease_is_taken_over_cannot_write_and_exits_4(
    tmp_path: Path, sandbox: Any, pg_location: str, pg: Any, pg_schema: str
) -> None:
    manifest, ids = e2e_manifest(tmp_path)
    child = start(*apply_args(manifest, sandbox, pg_location), cwd=tmp_path)
    wait_for(lambda: sandbox.stats()["accepted"] >= 20, 30, "20 models accepted")
    with pg.transaction():
        pg.execute(f'UPDATE "{pg_schema}".states SET lock_epoch = lock_epoch + 1')
        rows = model_rows(pg, pg_schema)
        at_takeover = sandbox.stats()["load_model"]
    proc = finish(child)
    assert proc.returncode == 4, shown(proc)
    assert "this run lost its lease (epoch 1; the state's lease is now at epoch 2" in proc.stderr
    assert model_rows(pg, pg_schema) == rows  # nothing overwritten after the takeover
    assert sandbox.stats()["load_model"] - at_takeover <= PARALLELISM
    converge(manifest, sandbox, pg_location, ids, tmp_path, pg)
    fallback = manifest.parent / ".modelsync" / f"prod.{pg_schema}.pg-fallback.journal"
    assert not fallback.exists()  # folded in by the run that converged


@pytest.mark.slow
def test_a_file_state_migrated_to_postgresql_plans_no_changes(
    tmp_path: Path, sandbox: Any, pg_location: str
) -> None:
    from modelsync.commands import state as commands
    from modelsync.settings import Settings

    manifest, ids = e2e_manifest(tmp_path, 20)
    file_state = tmp_path / "manifests" / ".modelsync" / "prod.state.json"
    first = run(*apply_args(manifest, sandbox, str(file_state)), cwd=tmp_path)
    assert first.returncode == 0, shown(first)
    settings = Settings(str(manifest), endpoint=sandbox.load_model_url, state=str(file_state))
    migrated = commands.migrate(settings, pg_location)
    assert (migrated.serial, migrated.models) == (1, 20)
    plan = run(
        "plan",
        manifest,
        "--endpoint",
        sandbox.load_model_url,
        "--state",
        pg_location,
        "--detailed-exitcode",
        cwd=tmp_path,
    )
    assert plan.returncode == 0, shown(plan)
    assert "Plan: 0 to create, 0 to update, 0 to retry, 20 unchanged, 0 orphaned." in plan.stdout
    again = run(*apply_args(manifest, sandbox, pg_location), cwd=tmp_path)
    assert again.returncode == 0 and sandbox.stats()["load_model"] == 20, shown(again)
    copied = read_pg(pg_location, manifest, sandbox)
    assert copied.lineage == migrated.lineage and sorted(copied.models) == ids


# --------------------------------------------------------------------------- the CLI


def test_cli_state_migrate_ddl_and_unlock(
    cli: Any, tmp_path: Path, pg_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsync.defaults import SANDBOX_ENDPOINT

    manifest = tmp_path / "example.yaml"
    manifest.write_text(
        (Path(__file__).parent.parent / "manifests" / "example.yaml").read_text("utf-8"),
        encoding="utf-8",
    )
    code, _out, err = cli("apply", "--sandbox", manifest)
    assert code == 0, err
    sandbox_state = tmp_path / ".modelsync" / "example.sandbox.state.json"
    target = pg_location + "&name=example"
    common = ["--endpoint", SANDBOX_ENDPOINT]

    code, out, err = cli(
        "state", "migrate", manifest, "--state", sandbox_state, "--to", target, *common
    )
    assert code == 0, err
    assert out.startswith(f"Copied state {sandbox_state} to postgresql://")
    assert ": 5 models, serial " in out
    code, out, err = cli("plan", manifest, "--state", target, *common, "--detailed-exitcode")
    assert (code, out.splitlines()[-1]) == (
        0,
        "Plan: 0 to create, 0 to update, 0 to retry, 5 unchanged, 0 orphaned.",
    )
    # Migrating again refuses: the target is not empty any more.
    code, _out, err = cli(
        "state", "migrate", manifest, "--state", sandbox_state, "--to", target, *common
    )
    assert code == 4 and "is not empty" in err

    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["schema"][0]
    code, out, err = cli("state", "ddl", manifest, "--state", target)
    assert code == 0, err
    assert f'CREATE SCHEMA IF NOT EXISTS "{schema}";' in out
    assert f'CREATE TABLE IF NOT EXISTS "{schema}".states (' in out
    assert "public" not in out

    # Nothing holds the lease: an unlock names the state and refuses (exit 4).
    code, _out, err = cli("state", "unlock", manifest, "--state", target, "--epoch", "99")
    assert code == 4, err


# --------------------------------------------------------------------------- found by review


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://admin:CanaryPw7@db.example/ops",
        "postgresql://admin:Canary?Pw7@127.0.0.1:1/ops",
        "postgresql://admin:Canary/Pw7@127.0.0.1:1/ops",
        "postgresql://admin:Canary%zzPw7@127.0.0.1:1/ops",
    ],
    ids=["unknown scheme", "raw ?", "raw /", "bad percent-encoding"],
)
def test_a_state_url_never_reads_as_empty_nor_shows_its_password(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\nmodels:\n  - model_id: alpha\n    url: org/alpha\n"
        "    model_format: diffusers\n    model_category: stable_diffusion\n",
        encoding="utf-8",
    )
    code, out, err = cli("plan", manifest, "--state", url)
    assert code == 4, out + err
    assert "Canary" not in out + err and "Pw7" not in out + err
    if "?" in url.split("@")[0] or "/" in url.split("://")[1].split("@")[0]:
        # Refused before libpq parses it (it would split it elsewhere and quote pieces).
        assert "percent-encode them" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]  # no file state made


def test_a_file_url_with_a_host_is_refused(cli: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nmodels: []\n", encoding="utf-8")
    code, _out, err = cli("plan", manifest, "--state", "file://.modelsync/m.state.json")
    assert code == 4
    assert "a file URL names a host ('.modelsync')" in err


def test_a_fifo_at_the_fallback_journal_is_refused_without_hanging(
    tmp_path: Path, pg_location: str
) -> None:
    from modelsync.store.postgres_fallback import fallback_path
    from modelsync.store.postgres_sql import parse_target

    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nmodels: []\n", encoding="utf-8")
    target = parse_target(pg_location, manifest)
    fifo = fallback_path(manifest, target.schema, target.name)
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "modelsync", "plan", str(manifest), "--state", pg_location],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert time.monotonic() - started < 15
    assert done.returncode == 4, done.stderr
    assert "not a regular file" in done.stderr and "Traceback" not in done.stderr
