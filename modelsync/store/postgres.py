"""The PostgreSQL backend: a state shared by every runner that reaches the database (§2b).

``--state postgresql://user@host/db`` (or ``postgres://``; libpq's rules and variables
apply). Tables live in a schema of their own (``schema=``, default ``modelsync``):

- ``schema_version``: the version of the tables (created in one transaction after
  ``pg_advisory_xact_lock``, so runs that start at once on a new database do not race);
- ``states``: one row per state (``name=``, default the manifest's stem): lineage,
  endpoint, serial, format version, and the lease (lock epoch, holder, expiry);
- ``models``: one row per model: the record as the file state holds it (jsonb), its status
  and fingerprint, and the epoch of the run that wrote it.

Results are rows, written as they come: one small fenced statement per result, never a
rewrite. The lease, the fence and the fallback journal: :mod:`.postgres_writer`.
"""

from __future__ import annotations

import types
from dataclasses import replace
from pathlib import Path

import psycopg

from modelsync.errors import StateError, StateLockedError
from modelsync.records import State
from modelsync.store import postgres_conn as pg
from modelsync.store import postgres_fallback as fb
from modelsync.store import trust
from modelsync.store.postgres_admin import Unlocked
from modelsync.store.postgres_sql import (
    SQL_BREAK,
    SQL_ENSURE_ROW,
    SQL_HOLDER,
    SQL_IMPORT_HEADER,
    SQL_IMPORT_MODEL,
    SQL_LOCK_ROW,
    Target,
    parse_target,
)
from modelsync.store.postgres_writer import PostgresWriter


class PostgresBackend:
    """A state kept in PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        location: str,
        endpoint: str,
        *,
        manifest_path: str | Path = "",
        skip_schema_creation: bool = False,
        target: Target | None = None,
    ) -> None:
        self.target = target if target is not None else parse_target(location, manifest_path)
        if skip_schema_creation:
            self.target = replace(self.target, skip_schema_creation=True)
        self.endpoint = endpoint
        self.manifest_path = Path(manifest_path)
        self.manifest_text = str(manifest_path) or "MANIFEST"
        pg.register_password(self.target)

    @property
    def location(self) -> str:
        """The URL with its password masked and the state's name."""
        return self.target.location

    @property
    def fallback_path(self) -> Path:
        """Where results are kept when the database cannot take them."""
        return fb.fallback_path(self.manifest_path, self.target.schema, self.target.name)

    def read(self) -> State:
        """The state, without the lock and without writing anything (no tables: a first run)."""
        conn = pg.connect(self.target, "read")
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            version = pg.tables_version(conn, self.target)
            if version is None:
                loaded = pg.empty(self.endpoint)
            else:
                pg.check_version(self.target, version)
                loaded = pg.load_state(conn, self.target, self.endpoint)
        except psycopg.Error as exc:
            raise pg.database_error(self.target, "reading the state", exc) from None
        finally:
            pg.close(conn)
        fallback = fb.read_fallback(self.fallback_path, self.location)
        pg.check_trust(self.target, self.endpoint, loaded, fallback)
        models = dict(loaded.models)
        kept = fallback is not None and fb.fold_in_memory(models, dict(loaded.epochs), fallback)
        return State(
            location=self.location,
            lineage=loaded.lineage,
            serial=loaded.serial,
            endpoint=loaded.endpoint if loaded.exists else self.endpoint,
            models=types.MappingProxyType(models),
            exists=loaded.exists or kept,
        )

    def open_writer(self, *, lock_timeout: float, command: str) -> PostgresWriter:
        """Take the lease and open the state to write."""
        return PostgresWriter(self, lock_timeout=lock_timeout, command=command)

    def describe_holder(self) -> str:
        """Who holds the lease, from the state's row."""
        try:
            conn = pg.connect(self.target, "read")
        except StateError:
            return "another process"
        try:
            if pg.tables_version(conn, self.target) is None:
                return "another process"
            return pg.describe_holder(conn, self.target, self.manifest_text)
        except psycopg.Error:
            return "another process"
        finally:
            pg.close(conn)

    def for_sandbox(self, endpoint: str) -> PostgresBackend:
        """The state ``<name>.sandbox`` in the same schema."""
        return PostgresBackend(
            self.location,
            endpoint,
            manifest_path=self.manifest_path,
            target=self.target.renamed(f"{self.target.name}.sandbox"),
        )

    # -- state migrate / state unlock

    def import_state(self, state: State) -> None:
        """Create this state as a copy of ``state`` (lineage and serial kept); it must be empty."""
        conn = pg.connect(self.target, "migrate")
        try:
            pg.ensure_tables(conn, self.target)
            with conn.transaction():
                self._import(conn, state)
        except psycopg.Error as exc:
            raise pg.database_error(self.target, "copying the state in", exc) from None
        finally:
            pg.close(conn)

    def _import(self, conn: pg.Connection, state: State) -> None:
        s = self.target.qschema
        params = {
            "name": self.target.name,
            "lineage": state.lineage,
            "endpoint": state.endpoint,
            "serial": state.serial,
            "format_version": trust.FORMAT_VERSION,
        }
        conn.execute(SQL_ENSURE_ROW.format(s=s), params)
        row = conn.execute(SQL_LOCK_ROW.format(s=s), params).fetchone()
        assert row is not None
        serial, held, epoch, count = row
        if serial > 0 or count > 0:
            raise StateError(
                f"state {self.location} is not empty (serial {serial}, {count} model(s)):"
                " migrate copies only into an empty state; choose another name= or schema=,"
                " or delete that state first"
            )
        if held:
            holder = pg.describe_holder(conn, self.target, self.manifest_text)
            raise trust.locked(self.location, holder, 0)
        conn.execute(SQL_IMPORT_HEADER.format(s=s), params)
        rows = []
        for model_id, record in sorted(state.models.items()):
            data = pg.clean(record.to_json())
            rows.append({"name": self.target.name, "epoch": epoch, **pg.model_row(model_id, data)})
        if rows:
            with conn.cursor() as cursor:
                cursor.executemany(SQL_IMPORT_MODEL.format(s=s), rows)

    def break_lease(self, epoch: int) -> Unlocked:
        """Break the lease at ``epoch`` (its holder is gone); the epoch moves on."""
        conn = pg.connect(self.target, "unlock")
        try:
            if pg.tables_version(conn, self.target) is None:
                raise StateError(f"state {self.location} does not exist: nothing to unlock")
            holder = pg.describe_holder(conn, self.target, self.manifest_text)
            params = {"name": self.target.name, "epoch": epoch}
            row = conn.execute(SQL_BREAK.format(s=self.target.qschema), params).fetchone()
            if row is not None:
                return Unlocked(self.location, holder, epoch, int(row[0]))
            now = conn.execute(SQL_HOLDER.format(s=self.target.qschema), params).fetchone()
        except psycopg.Error as exc:
            raise pg.database_error(self.target, "breaking the lease", exc) from None
        finally:
            pg.close(conn)
        raise self._not_broken(epoch, now, holder)

    def _not_broken(self, epoch: int, now: tuple[object, ...] | None, holder: str) -> StateError:
        if now is None:
            return StateError(f"state {self.location} does not exist: nothing to unlock")
        current, until = now[5], now[6]
        if until is None:
            return StateError(
                f"state {self.location} is not locked (its lease is free, at epoch {current}):"
                " nothing was changed"
            )
        return StateLockedError(
            f"state {self.location} is held at lease epoch {current} by {holder}, not at epoch"
            f" {epoch}: nothing was changed; if that holder is gone too, run"
            f" 'modelsync state unlock {self.manifest_text} --epoch {current}'"
        )
