"""The state behind one small interface, chosen from the ``--state`` value (DESIGN §2, §2b).

The rest of modelsync sees :class:`StateBackend` and :class:`StateWriter` only:

- ``backend.read()``: the state without taking the lock (``plan``, ``state list``);
- ``with backend.open_writer(lock_timeout=..., command=...) as writer``: the state under
  the run lock, with ``writer.state``, ``writer.record(id, record)``,
  ``writer.forget(ids)`` and ``writer.commit()`` (also done on leaving the block);
- ``backend.describe_holder()``: who holds the lock, for the "locked" error;
- the trust checks (format version, lineage, endpoint) are made by every backend on
  every read, and an untrusted state is a :class:`~modelsync.errors.StateError` (exit 4).

Backends are registered by URL scheme and imported lazily, so a plain ``plan`` never
imports a database driver. A second backend is one new module and one registry line.
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from modelsync.errors import StateError
from modelsync.records import ModelRecord, State


class StateWriter(Protocol):
    """The state under the run lock: record results as they come, commit at the end."""

    @property
    def state(self) -> State:
        """The current view: what was read plus everything recorded so far."""
        ...

    def record(self, model_id: str, record: ModelRecord) -> None:
        """Record one result durably (O(1)); returns once it would survive ``kill -9``."""
        ...

    def forget(self, model_ids: Iterable[str]) -> None:
        """Drop records (nothing is deleted remotely)."""
        ...

    def commit(self) -> None:
        """Make everything recorded part of the state proper (a new serial if it changed)."""
        ...


class StateBackend(Protocol):
    """Where one state lives: a file, or a database row set."""

    @property
    def location(self) -> str:
        """The state's name in messages: a path, or a URL with its password masked."""
        ...

    def read(self) -> State:
        """The state, without the lock and without writing anything."""
        ...

    def open_writer(
        self, *, lock_timeout: float, command: str
    ) -> AbstractContextManager[StateWriter]:
        """Take the run lock (waiting up to ``lock_timeout`` s) and open the state to write."""
        ...

    def describe_holder(self) -> str:
        """Who holds the run lock now, for the "locked" error (``another process`` if unknown)."""
        ...

    def for_sandbox(self, endpoint: str) -> StateBackend:
        """The sandbox's own state beside this one, for ``endpoint``: ``apply --sandbox``
        never touches this one."""
        ...


def known_ids(model_ids: Iterable[str], models: Mapping[str, object]) -> list[str]:
    """The ids ``forget`` acts on: once each, in order, only those the state holds (a lone
    string is one id, not its characters)."""
    ids = [model_ids] if isinstance(model_ids, str) else model_ids
    return [mid for mid in dict.fromkeys(ids) if mid in models]


# Scheme -> "module:factory". The factory takes (location, endpoint) and returns a backend;
# a database's factory also takes manifest_path= (the state's default name, and where local
# files go) and skip_schema_creation=.
_BACKENDS: dict[str, str] = {
    "file": "modelsync.store.file:FileBackend",
    "postgresql": "modelsync.store.postgres:PostgresBackend",
    "postgres": "modelsync.store.postgres:PostgresBackend",
}
# Scheme -> how to install its driver, said when importing the backend fails.
_INSTALL_HINTS: dict[str, str] = {
    "postgresql": "a PostgreSQL state needs psycopg 3: pip install 'modelsync[postgres]'",
    "postgres": "a PostgreSQL state needs psycopg 3: pip install 'modelsync[postgres]'",
}


def default_location(manifest_path: str | Path) -> Path:
    """``<manifest dir>/.modelsync/<manifest stem>.state.json``."""
    manifest = Path(manifest_path)
    return manifest.parent / ".modelsync" / f"{manifest.stem}.state.json"


_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _scheme(location: str) -> str:
    # Any RFC 3986 scheme is a URL (postgresql+psycopg://...): an unknown one is refused,
    # never taken for a file path, which would read as "nothing submitted".
    found = _SCHEME_RE.match(location)
    return found.group(1).lower() if found else "file"


def _userinfo(location: str) -> tuple[str, str, str, str] | None:
    """(scheme, user, password, the rest) of a URL with a password, as written; else None.

    A password may hold '/', '?' or '#' when it is not percent-encoded: everything up to
    the last '@' of the whole text is the user and the password.
    """
    head, colon, rest = location.partition("://")
    if not colon or "@" not in rest:
        return None
    userinfo, _at, after = rest.rpartition("@")
    user, has_password, secret = userinfo.partition(":")
    return (head, user, secret, after) if has_password else None


def url_password(location: str) -> str | None:
    """The password of a URL exactly as written (percent-encoded or not, valid or not)."""
    parts = _userinfo(location)
    if parts is None or not parts[2]:
        return None
    return parts[2]


def mask_url(location: str) -> str:
    """A state URL as it may be shown: its password, if any, masked (also ``password=``)."""
    parts = _userinfo(location)
    if parts is not None:
        head, user, _secret, after = parts
        location = f"{head}://{user}:***@{after}"
    base, sep, query = location.partition("?")
    if not sep:
        return base
    pieces = [
        f"{p.partition('=')[0]}=***"
        if "=" in p and urllib.parse.unquote(p.partition("=")[0]).lower() == "password"
        else p
        for p in query.split("&")
    ]
    return f"{base}?{'&'.join(pieces)}"


def open_state(
    location: str | None,
    *,
    manifest_path: str | Path,
    endpoint: str,
    skip_schema_creation: bool = False,
) -> StateBackend:
    """The backend for a ``--state`` value (a path or a URL); None: the default file.

    ``skip_schema_creation``: a database backend never creates its tables (a file ignores it).
    """
    text = location if location else str(default_location(manifest_path))
    scheme = _scheme(text)
    if scheme == "file" and text.lower().startswith("file://"):
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise StateError(
                f"--state {mask_url(text)!r}: a file URL names a host ({parts.netloc!r}); "
                "give a path, or file:///absolute/path"
            )
        text = urllib.parse.unquote(parts.path)
    target = _BACKENDS.get(scheme)
    if target is None:
        known = "".join(f", {s}://" for s in sorted(_BACKENDS) if s != "file")
        raise StateError(
            f"--state {mask_url(text)!r}: no state backend for '{scheme}://' "
            f"(give a file path{known})"
        )
    module_name, _, factory_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(scheme)
        if hint is None:
            raise
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise StateError(f"--state {mask_url(text)}: {hint} (importing it failed: {why})") from None
    factory = getattr(module, factory_name)
    if scheme == "file":
        backend: StateBackend = factory(text, endpoint)
    else:
        backend = factory(
            text, endpoint, manifest_path=manifest_path, skip_schema_creation=skip_schema_creation
        )
    return backend
