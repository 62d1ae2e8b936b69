"""Requests in flight, and how to end one: a total time limit per attempt, and abandonment.

requests' read timeout bounds each read, not the answer: a server that drips a byte
every few seconds keeps an attempt alive for ever. The :class:`Watchdog` (one thread for
the whole transport, not one per request) shuts the socket of an attempt that outlives
its limit, and :meth:`InFlight.abort_all` shuts every socket at once when the run is
abandoned (``--deadline``, the end of ``--grace``, a second SIGINT): the worker blocked
in ``recv`` gets an error at once instead of waiting for the server.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class InFlight:
    """The connection each thread is using for its request, and the ones to abort."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, Any] = {}
        self._aborted: dict[int, str] = {}
        self.abandoned = threading.Event()

    def using(self, connection: Any) -> None:
        """The calling thread sends its request on ``connection``."""
        with self._lock:
            self._active[threading.get_ident()] = connection

    def done(self) -> str | None:
        """The calling thread's request ended; why it was aborted, if it was."""
        ident = threading.get_ident()
        with self._lock:
            self._active.pop(ident, None)
            return self._aborted.pop(ident, None)

    def abort(self, ident: int, why: str) -> None:
        """End the request of thread ``ident`` now (its socket is shut down)."""
        with self._lock:
            connection = self._active.get(ident)
            if connection is None:
                return
            self._aborted[ident] = why
        _shut(connection)

    def abort_all(self, why: str) -> None:
        """End every request in flight, and let no attempt start after this."""
        self.abandoned.set()
        with self._lock:
            idents = list(self._active)
        for ident in idents:
            self.abort(ident, why)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Calls ``expire(ident)`` for each armed entry whose time came; one daemon thread."""

    def __init__(self, expire: Callable[[int], None]) -> None:
        self._expire = expire
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []  # [when, seq, ident, armed]
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, ident: int) -> list[Any]:
        """Expire ``ident`` after ``seconds`` unless disarmed first; returns the entry."""
        entry = [time.monotonic() + seconds, next(self._seq), ident, True]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modelsync-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def disarm(self, entry: list[Any]) -> None:
        """The attempt ended in time."""
        entry[3] = False  # popped lazily by the thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and not self._heap[0][3]:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(timeout=60.0)
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(timeout=delay)
                    continue
                entry = heapq.heappop(self._heap)
            if entry[3]:
                self._expire(entry[2])


def tracking_pools(inflight: InFlight) -> dict[str, type]:
    """urllib3 pool classes whose connections tell ``inflight`` when a request starts."""

    class _Tracked:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            inflight.using(self)
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class Connection(_Tracked, HTTPConnection):
        pass

    class SecureConnection(_Tracked, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    return {"http": Pool, "https": SecurePool}
