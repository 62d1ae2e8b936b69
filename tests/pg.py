"""A real PostgreSQL server for the tests: a database per test run, made and dropped here.

``MODELSYNC_TEST_POSTGRES`` is a libpq URL of a server and a database to connect to first
(default ``postgresql://postgres@127.0.0.1:5432/postgres``); the tests create a database
``modelsync_test_<pid>_<random>`` there and drop it at the end of the session. Without a
server, the PostgreSQL tests skip with a message naming the variable, except in CI
(``CI=true``), where they fail: CI must never pass by skipping them.

Each test that needs a state gets a schema of its own in that database (``pg_location``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

VARIABLE = "MODELSYNC_TEST_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    """The URL of the server the tests use."""
    return os.environ.get(VARIABLE) or DEFAULT_URL


def in_ci() -> bool:
    """CI=true: a missing server fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() == "true"


def _missing(why: str) -> None:
    from modelsync.store import mask_url

    message = (
        f"no PostgreSQL server for the tests at {VARIABLE}={mask_url(server_url())!r}"
        f" ({why}); set {VARIABLE} to a libpq URL of a server where the tests may create a"
        " database"
    )
    if in_ci():
        pytest.fail(f"{message} (CI=true: PostgreSQL tests never skip in CI)", pytrace=False)
    pytest.skip(message)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database (its parameters kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def with_params(url: str, **params: str) -> str:
    """``url`` with more query parameters."""
    joiner = "&" if "?" in url else "?"
    return url + joiner + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def admin_connect(url: str) -> Any:
    """An autocommit psycopg connection (the tests' own, not modelsync's)."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a fresh database for this test run; dropped at the end."""
    try:
        import psycopg
    except ImportError as exc:
        _missing(f"psycopg is not installed: {exc}; pip install -e '.[test]'")
    url = server_url()
    try:
        admin = admin_connect(url)
    except psycopg.Error as exc:
        _missing(" ".join(str(exc).split()))
    name = f"modelsync_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with admin_connect(url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_schema() -> str:
    """A schema name of this test's own."""
    return f"t_{secrets.token_hex(6)}"


@pytest.fixture
def pg_location(pg_database: str, pg_schema: str) -> str:
    """A ``--state`` URL of a fresh, empty state (its own schema) for one test."""
    return with_params(pg_database, schema=pg_schema)


@pytest.fixture
def pg(pg_database: str) -> Iterator[Any]:
    """An autocommit connection to the test database, for the test's own SQL."""
    conn = admin_connect(pg_database)
    yield conn
    conn.close()


# --------------------------------------------------------------------------- a cuttable link


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the server: :meth:`cut` is a network cut.

    After a cut, open connections are closed and new ones refused (the listening socket
    is gone), as when a runner loses its route to the database; :meth:`restore` listens
    again on the same port.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            if listener is not None:
                # shutdown first: a close() alone leaves a thread blocked in accept() with
                # the socket still listening.
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets = []

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
