"""The writer of a PostgreSQL state: the lease, the fence, the heartbeat, the fallback.

The run lock is a lease with a fencing epoch on the state's row. Taking it increments
``lock_epoch`` only when the lease is free, expired, or held by a session that is gone
(this session got the session advisory lock the holder's held); a heartbeat renews it
every TTL/3. Every write is one statement that also updates the state's row *where the
epoch is still this run's*: a run that lost its lease writes nothing, stops sending and
exits 4.

After a lost connection the writer reconnects only to check its epoch. If it holds,
the results of requests already in flight are still written, but nothing new is sent
(the next ``pending`` record is refused). If it does not, or the database stays
unreachable, the results that still arrive go to the local fallback journal
(:mod:`modelsync.store.postgres_fallback`), which the next run folds in.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import types
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from modelsync.errors import StateError
from modelsync.records import ModelRecord, State
from modelsync.redact import redact
from modelsync.store import known_ids, trust
from modelsync.store import postgres_conn as pg
from modelsync.store import postgres_fallback as fb
from modelsync.store.postgres_sql import (
    SQL_ACQUIRE,
    SQL_DELETE,
    SQL_ENSURE_ROW,
    SQL_HEADER,
    SQL_PUT,
    SQL_RELEASE,
    SQL_RENEW,
    SQL_SET_ENDPOINT,
)

if TYPE_CHECKING:
    from modelsync.store.postgres import PostgresBackend

_log = logging.getLogger("modelsync.store.postgres")

Mode = Literal["ok", "draining", "fenced", "offline", "failed"]
POLL_S = 0.25  # how often a run waiting for the lock (--lock-timeout) tries again
RECONNECT_TRIES = 3
RECONNECT_PAUSE_S = 1.0


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"


class PostgresWriter:
    """The state under the run lock (a lease), used as a context manager."""

    def __init__(self, backend: PostgresBackend, *, lock_timeout: float, command: str) -> None:
        self._backend = backend
        self._target = backend.target
        self._s = backend.target.qschema
        self._endpoint = backend.endpoint
        self._lock_timeout = max(0.0, float(lock_timeout))
        self._command = command
        # Named in application_name: "modelsync apply prod pid 42" (the command's verb).
        words = command.split()
        verb = words[1] if len(words) > 1 and words[1].isalpha() else ""
        self._purpose = verb or "write"
        self._mutex = threading.Lock()
        self._conn: pg.Connection | None = None
        self._entered = False
        self._open = False
        self._epoch = 0
        self._session_lock = False
        self._lineage = ""
        self._serial = 0
        self._exists = False
        self._models: dict[str, ModelRecord] = {}
        self._cycle = False  # something changed since the last commit (the serial moved)
        self._mode: Mode = "ok"
        self._why = ""
        self._epoch_now: int | None = None
        self._told = False
        self._fallback = fb.FallbackWriter(backend.fallback_path, {})
        self._stop_beat = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="modelsync-lease", daemon=True)

    # -- context manager

    def __enter__(self) -> PostgresWriter:
        if self._entered:
            raise RuntimeError("a PostgresWriter can be entered only once")
        self._entered = True
        self._conn = pg.connect(self._target, self._purpose)
        try:
            self._open_state()
        except BaseException:
            self._release()
            raise
        self._open = True
        self._beat.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._stop_beat.set()
        if self._beat.is_alive():
            self._beat.join(timeout=pg.STATEMENT_TIMEOUT_MS / 1000 + 5)
        with self._mutex:
            self._open = False
            problem = None if self._mode == "ok" else self._refusal_text()
            self._release()
        if self._fallback.kept:
            _log.warning(
                "state %s: %d result(s) that could not be written to the database are kept in"
                " %s; the next run folds them in",
                self._target.location,
                self._fallback.kept,
                self._fallback.path,
            )
        if problem is not None and not self._told and exc_type is None:
            self._told = True
            raise StateError(problem)

    # -- opening

    def _open_state(self) -> None:
        conn = self._live()
        target = self._target
        params = self._params()
        try:
            pg.ensure_tables(conn, target)
            row = {"format_version": trust.FORMAT_VERSION, "endpoint": self._endpoint}
            conn.execute(SQL_ENSURE_ROW.format(s=self._s), {**params, **row, "lineage": _uuid()})
        except psycopg.Error as exc:
            raise pg.database_error(target, "opening the state", exc) from None
        self._acquire(conn)
        try:
            loaded = pg.load_state(conn, target, self._endpoint)
        except psycopg.Error as exc:
            raise pg.database_error(target, "reading the state", exc) from None
        fallback = fb.read_fallback(self._backend.fallback_path, target.location)
        pg.check_trust(target, self._endpoint, loaded, fallback)
        self._fallback = fb.FallbackWriter(
            self._backend.fallback_path, self._fallback_header(loaded)
        )
        if fallback is not None:
            loaded = pg.fold_fallback(conn, self._target, self._endpoint, self._epoch, fallback)
        if not loaded.exists:
            self._run(SQL_SET_ENDPOINT, {"endpoint": self._endpoint})
            loaded.endpoint = self._endpoint
        self._lineage, self._serial, self._exists = loaded.lineage, loaded.serial, loaded.exists
        self._models = dict(loaded.models)

    def _fallback_header(self, loaded: pg.Loaded) -> dict[str, Any]:
        return {
            "lineage": loaded.lineage,
            "schema": self._target.schema,
            "name": self._target.name,
            "endpoint": loaded.endpoint if loaded.exists else self._endpoint,
        }

    def _acquire(self, conn: pg.Connection) -> None:
        deadline = time.monotonic() + self._lock_timeout
        params = {
            **self._params(),
            "ttl": self._target.lease_ttl,
            "pid": os.getpid(),
            "user": _user(),
            "host": socket.gethostname(),
            "command": redact(self._command),
        }
        while True:
            try:
                self._try_session_lock(conn)
                params["session_lock"] = self._session_lock
                row = conn.execute(SQL_ACQUIRE.format(s=self._s), params).fetchone()
                if row is not None:
                    self._epoch = int(row[0])
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = pg.describe_holder(conn, self._target, self._backend.manifest_text)
                    raise trust.locked(self._target.location, holder, self._lock_timeout)
            except psycopg.Error as exc:
                raise pg.database_error(self._target, "taking the run lock", exc) from None
            time.sleep(min(POLL_S, remaining))

    def _try_session_lock(self, conn: pg.Connection) -> None:
        if not self._session_lock:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", self._target.lock_key)
            found = row.fetchone()
            self._session_lock = bool(found and found[0])

    # -- the protocol

    @property
    def state(self) -> State:
        """The current view: what was read plus everything recorded so far."""
        with self._mutex:
            self._check_open()
            return State(
                location=self._target.location,
                lineage=self._lineage,
                serial=self._serial,
                endpoint=self._endpoint,
                models=types.MappingProxyType(dict(self._models)),
                exists=self._exists,
            )

    def record(self, model_id: str, record: ModelRecord) -> None:
        """Write one result (one fenced UPSERT); kept in the fallback journal if it cannot be."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, not {model_id!r}")
        data = pg.clean(record.to_json())
        frozen = ModelRecord.from_json(data, where=f"record for {model_id!r}")
        with self._mutex:
            self._check_open()
            if self._mode == "ok" and (
                self._models.get(model_id) == frozen or self._put(model_id, data, frozen)
            ):
                return
            if frozen.status == "pending":
                # Written before a request is sent: refusing it is what stops the sending.
                raise self._refusal()
            if self._mode == "draining" and self._put(model_id, data, frozen):
                return
            self._fallback.put(self._epoch, model_id, data)
            self._models[model_id] = frozen

    def forget(self, model_ids: Iterable[str]) -> None:
        """Drop records (one fenced DELETE); kept in the fallback journal if it cannot be."""
        with self._mutex:
            self._check_open()
            known = known_ids(model_ids, self._models)
            if not known:
                return
            if self._mode in ("ok", "draining") and self._delete(known):
                return
            self._fallback.drop(self._epoch, known)
            for mid in known:
                del self._models[mid]

    def commit(self) -> None:
        """Results are rows as they come: this starts a new serial for the next change."""
        with self._mutex:
            self._check_open()
            if self._mode in ("fenced", "offline", "failed"):
                raise self._refusal()
            self._cycle = False

    # -- writing

    def _params(self) -> dict[str, Any]:
        return {"name": self._target.name, "epoch": self._epoch}

    def _put(self, model_id: str, data: dict[str, Any], frozen: ModelRecord) -> bool:
        """The fenced UPSERT; False (and the mode changed) if it could not be written."""
        bump = 0 if self._cycle else 1
        params = {**self._params(), **pg.model_row(model_id, data), "bump": bump}
        row = self._write(SQL_PUT, params)
        if row is None:
            return False
        self._models[model_id] = frozen
        self._changed(bump)
        return True

    def _delete(self, model_ids: list[str]) -> bool:
        bump = 0 if self._cycle else 1
        row = self._write(SQL_DELETE, {**self._params(), "model_ids": model_ids, "bump": bump})
        if row is None:
            return False
        for mid in model_ids:
            del self._models[mid]
        self._changed(bump)
        return True

    def _changed(self, bump: int) -> None:
        self._cycle = True
        self._serial += bump
        self._exists = True

    def _write(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run a fenced statement: its row, or None when the fence or the connection failed."""
        try:
            row = self._live().execute(sql.format(s=self._s), params).fetchone()
        except psycopg.Error as exc:
            self._trouble(exc)
            return None
        if row is None or row[0] == 0:
            self._fenced()
            return None
        return row

    def _run(self, sql: str, extra: dict[str, Any]) -> int:
        try:
            return self._live().execute(sql.format(s=self._s), {**self._params(), **extra}).rowcount
        except psycopg.Error as exc:
            raise pg.database_error(self._target, "writing the state", exc) from None

    def _live(self) -> pg.Connection:
        if self._conn is None:
            raise StateError(self._refusal_text())
        return self._conn

    # -- trouble

    def _trouble(self, exc: psycopg.Error) -> None:
        conn = self._conn
        if isinstance(exc, psycopg.OperationalError) or conn is None or conn.broken:
            self._lost(exc)
        else:
            self._mode, self._why = "failed", pg.say(exc, self._target)
            _log.warning("state %s: a write failed: %s", self._target.location, self._why)

    def _lost(self, exc: psycopg.Error) -> None:
        """The connection failed: reconnect only to check that this run's epoch holds."""
        why = pg.say(exc, self._target)
        _log.warning(
            "state %s: the connection to the database was lost (%s); reconnecting to check"
            " this run's lease (epoch %d)",
            self._target.location,
            why,
            self._epoch,
        )
        pg.close(self._conn)
        self._conn = None
        self._session_lock = False
        self._mode, self._why = "offline", f"the database is unreachable ({why})"
        conn = self._reconnect()
        if conn is None:
            return
        try:
            row = conn.execute(SQL_HEADER.format(s=self._s), self._params()).fetchone()
            self._epoch_now = None if row is None else int(row[4])
            if self._epoch_now == self._epoch:
                self._try_session_lock(conn)
                renewed = conn.execute(
                    SQL_RENEW.format(s=self._s),
                    {
                        **self._params(),
                        "ttl": self._target.lease_ttl,
                        "session_lock": self._session_lock,
                    },
                ).rowcount
                if renewed:
                    self._conn = conn
                    self._mode, self._why = (
                        "draining",
                        f"the connection to the database was lost ({why})",
                    )
                    return
        except psycopg.Error as again:
            pg.close(conn)
            self._why = f"the database is unreachable ({pg.say(again, self._target)})"
            return
        pg.close(conn)
        self._mode = "fenced"

    def _reconnect(self) -> pg.Connection | None:
        for attempt in range(RECONNECT_TRIES):
            if attempt:
                time.sleep(RECONNECT_PAUSE_S)
            try:
                return pg.connect(self._target, self._purpose)
            except StateError as exc:
                _log.debug("reconnecting failed: %s", exc)
        return None

    def _fenced(self) -> None:
        self._mode = "fenced"
        try:
            row = self._live().execute(SQL_HEADER.format(s=self._s), self._params()).fetchone()
            self._epoch_now = None if row is None else int(row[4])
        except (psycopg.Error, StateError):
            self._epoch_now = None
        _log.warning("%s", self._refusal_text())

    def _refusal(self) -> StateError:
        self._told = True
        return StateError(self._refusal_text())

    def _refusal_text(self) -> str:
        where = f"state {self._target.location}"
        kept = (
            f"; results that still arrive are kept in {self._fallback.path}, and the next run"
            " folds them in"
        )
        if self._mode == "draining":
            return (
                f"{where}: {self._why}; this run's lease (epoch {self._epoch}) still held when it"
                " reconnected and what was in flight is recorded, but a run sends nothing more"
                " after a lost connection; run apply again"
            )
        if self._mode == "fenced":
            now = "gone" if self._epoch_now is None else f"at epoch {self._epoch_now}"
            return (
                f"{where}: this run lost its lease (epoch {self._epoch}; the state's lease is now"
                f" {now}: another run took it over, or 'modelsync state unlock' broke it), so it"
                f" cannot write the state and sends nothing more{kept}"
            )
        if self._mode == "failed":
            return (
                f"{where}: writing a result failed ({self._why}); this run sends nothing more{kept}"
            )
        return f"{where}: {self._why}; this run sends nothing more{kept}"

    # -- the lease

    def _heartbeat(self) -> None:
        interval = self._target.lease_ttl / 3
        while not self._stop_beat.wait(interval):
            with self._mutex:
                if self._mode in ("fenced", "offline", "failed") or not self._open:
                    return
                self._renew()

    def _renew(self) -> None:
        conn = self._live()
        try:
            self._try_session_lock(conn)
            params = {**self._params(), "ttl": self._target.lease_ttl}
            renewed = conn.execute(
                SQL_RENEW.format(s=self._s), {**params, "session_lock": self._session_lock}
            ).rowcount
        except psycopg.Error as exc:
            self._trouble(exc)
            return
        if not renewed:
            self._fenced()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._epoch and self._mode in ("ok", "draining"):
                conn.execute(SQL_RELEASE.format(s=self._s), self._params())
            if self._session_lock:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", self._target.lock_key)
        except psycopg.Error as exc:
            # The lease then ends with its TTL, the session lock with the session.
            _log.debug("releasing the lease failed: %s", pg.say(exc, self._target))
        finally:
            pg.close(conn)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(
                f"the writer of state {self._target.location} is not open (use it in a with block)"
            )


def _uuid() -> str:
    return str(uuid.uuid4())
