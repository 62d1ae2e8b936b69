"""A hostile load_model server of the tests' own, over real HTTP on 127.0.0.1.

Unlike the sandbox (modelsync's own code, which the tests must not trust to test modelsync),
this is a few lines of ``http.server`` that misbehave on purpose, one way per server and, if
asked, another way for some model ids::

    with Hostile("fail_once", fail_with="503") as server:
        run(..., "--endpoint", server.url)
        assert server.count("model-000") == 2

Behaviours (``behaviour=`` for every model, ``per_model={id: behaviour}`` to override):

- ``ok``: ``200 {"status":"success","message":"model load started"}``;
- ``fail_once``: the first request of each model_id fails (``fail_with``: ``"503"`` a 503 with
  a JSON error body, ``"500"`` a 500 with an HTML page, ``"garbage"`` a 200 whose body is not
  JSON); later requests succeed;
- ``outage``: always 503;
- ``hang``: read the request, never answer (until the server closes, or ``max_hold`` s);
- ``drip``: the status line and headers with a large Content-Length, then one byte every
  ``drip_every`` s (until the client leaves, the server closes, or ``max_hold`` s);
- ``redirect``: 301 to ``redirect_to`` (default: the same host, another path);
- ``throttle``: the first ``throttle_times`` requests of each model_id answer 429 with
  ``retry_after`` in the body; later ones succeed;
- ``spam_once``: the first request of each model_id gets the spam filter's HTTP 200 error
  ("please wait for ``spam_wait`` seconds and try again"); later ones succeed.

``exists``: model ids loaded "by hand" before the test. A request for one with force_load
``"no"`` gets ``200 {"status":"error","message":"Model id already exists"}``; with ``"yes"`` it is
accepted and recorded in :attr:`Hostile.overwritten` (what modelsync must never cause).
``latency``: seconds to wait before each answer.

Every request is recorded (:class:`Seen`: monotonic time it was read, model_id, force_load,
what it was answered). Every wait is bounded, the server's threads and sockets are all closed
and joined in ``__exit__`` (a thread left behind is an error), so no test can hang on it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOAD_MODEL_PATH = "/api/v3/load_model"
BEHAVIOURS = ("ok", "fail_once", "outage", "hang", "drip", "redirect", "throttle", "spam_once")
FAIL_KINDS = ("503", "500", "garbage")
SUCCESS = {"status": "success", "message": "model load started"}
ALREADY_EXISTS = {"status": "error", "message": "Model id already exists"}
# How long a socket read may block in the server, and how long __exit__ waits for a thread.
_SOCKET_TIMEOUT_S = 30.0
_JOIN_TIMEOUT_S = 10.0
_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Seen:
    """One request, as the server read it, and what it did with it."""

    at: float  # time.monotonic() when the whole request had been read
    method: str
    path: str
    model_id: str | None
    force_load: str | None
    answer: str  # "success", "503", "500", "garbage", "exists", "overwritten", "hang", ...
    status: int | None  # the HTTP status sent; None: no status line was sent (hang)
    body: Mapping[str, Any] | None  # the JSON body, the key masked


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: Hostile) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name=f"hostile-conn-{client_address[1]}",
            daemon=True,
        )
        with self._lock:
            self.connections.add(request)
            self.threads.add(thread)
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.connections.discard(request)
                self.threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (expected here: that is the point of hang/drip)
        # is not worth a traceback on the test's stderr.
        pass

    def wake_all(self) -> None:
        """Unblock every handler thread blocked on a socket read or write."""
        with self._lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def live_threads(self) -> list[threading.Thread]:
        with self._lock:
            return [t for t in self.threads if t.is_alive()]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    timeout = _SOCKET_TIMEOUT_S  # bounds every socket read and write of this connection
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, document: Any, **kwargs: Any) -> None:
        self._send(status, json.dumps(document).encode(), **kwargs)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > _MAX_BODY:
            return None
        return self.rfile.read(int(length))

    # -- methods

    def do_GET(self) -> None:
        self._other_method()

    def do_PUT(self) -> None:
        self._other_method()

    def _other_method(self) -> None:
        owner = self.server.owner
        owner._record(time.monotonic(), self.command, self.path, None, None, "405", 405, None)
        self._send_json(405, {"status": "error", "message": "method not allowed"})

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        at = time.monotonic()
        body: dict[str, Any] | None = None
        if raw is not None:
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    body = parsed
        if self.path != LOAD_MODEL_PATH:
            owner._record(at, self.command, self.path, None, None, "404", 404, body)
            self._send_json(404, {"status": "error", "message": "not found"})
            return
        if body is None:
            owner._record(at, self.command, self.path, None, None, "400", 400, None)
            self._send_json(400, {"status": "error", "message": "bad body", "code": 400})
            self.close_connection = True
            return
        model_id = body.get("model_id") if isinstance(body.get("model_id"), str) else None
        force_load = body.get("force_load") if isinstance(body.get("force_load"), str) else None
        answer = owner._decide(model_id, force_load)
        if owner.latency > 0 and answer not in ("hang", "drip"):
            owner._closing.wait(owner.latency)
        status = _STATUS.get(answer, 200)
        sent: int | None = None if answer == "hang" else status
        owner._record(at, self.command, self.path, model_id, force_load, answer, sent, body)
        getattr(self, "_answer_" + answer)()

    # -- answers

    def _answer_success(self) -> None:
        self._send_json(200, SUCCESS)

    def _answer_overwritten(self) -> None:
        self._send_json(200, SUCCESS)

    def _answer_exists(self) -> None:
        self._send_json(200, ALREADY_EXISTS)

    def _answer_503(self) -> None:
        self._send_json(503, {"status": "error", "message": "Service Unavailable"})

    def _answer_500(self) -> None:
        page = b"<html><head><title>500 Internal Server Error</title></head></html>"
        self._send(500, page, content_type="text/html")

    def _answer_garbage(self) -> None:
        self._send(200, b"<html><body>Bad Gateway</body></html>\x00\xff{", content_type="text/html")

    def _answer_redirect(self) -> None:
        self._send_json(
            301,
            {"status": "error", "message": "Moved Permanently"},
            headers={"Location": self.server.owner.redirect_to, "Connection": "close"},
        )
        self.close_connection = True

    def _answer_throttle(self) -> None:
        retry_after = self.server.owner.retry_after
        self._send_json(
            429,
            {
                "status": "error",
                "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                "retry_after": retry_after,
            },
        )

    def _answer_spam(self) -> None:
        wait = self.server.owner.spam_wait
        self._send_json(
            200,
            {
                "status": "error",
                "message": "Rate limit exceeded",
                "tips": "you are sending same request multiple times, spam filter is enabled, "
                f"please wait for {wait} seconds and try again",
            },
        )

    def _answer_hang(self) -> None:
        # Never answer; let go when the server closes (or after max_hold, so nothing waits forever).
        self.server.owner._closing.wait(self.server.owner.max_hold)
        self.close_connection = True

    def _answer_drip(self) -> None:
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        ends = time.monotonic() + owner.max_hold
        while time.monotonic() < ends:
            if owner._closing.wait(owner.drip_every):
                return
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:  # the client went away: the point of the exercise
                return


_STATUS = {"503": 503, "500": 500, "redirect": 301, "throttle": 429}


class Hostile:
    """A misbehaving load_model server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        behaviour: str = "ok",
        *,
        per_model: Mapping[str, str] | None = None,
        exists: Collection[str] = (),
        fail_with: str = "503",
        latency: float = 0.0,
        redirect_to: str | None = None,
        throttle_times: int = 3,
        retry_after: float = 1,
        spam_wait: int = 2,
        drip_every: float = 2.0,
        max_hold: float = 120.0,
    ) -> None:
        for b in (behaviour, *(per_model or {}).values()):
            if b not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {b!r}; one of {', '.join(BEHAVIOURS)}")
        if fail_with not in FAIL_KINDS:
            raise ValueError(f"fail_with: one of {', '.join(FAIL_KINDS)}")
        self.behaviour = behaviour
        self.per_model = dict(per_model or {})
        self.exists = frozenset(exists)
        self.fail_with = fail_with
        self.latency = latency
        self._redirect_to = redirect_to
        self.throttle_times = throttle_times
        self.retry_after = retry_after
        self.spam_wait = spam_wait
        self.drip_every = drip_every
        self.max_hold = max_hold
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seen: list[Seen] = []
        self._counts: Counter[str] = Counter()
        self._loads: Counter[str] = Counter()
        self._overwritten: list[str] = []
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def __enter__(self) -> Hostile:
        self._server = _Server(self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="hostile-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        leftovers = self.close()
        if leftovers and exc_type is None:
            raise AssertionError(f"hostile server: threads still alive after close: {leftovers}")

    def close(self) -> list[str]:
        """Stop serving, release every held request, close every socket; the threads left."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return []
        self._closing.set()  # hang and drip let go
        server.shutdown()  # serve_forever returns within poll_interval
        thread.join(_JOIN_TIMEOUT_S)
        server.wake_all()  # keep-alive connections waiting for a next request
        ends = time.monotonic() + _JOIN_TIMEOUT_S
        for handler in list(server.threads):
            handler.join(max(0.0, ends - time.monotonic()))
        server.server_close()
        left = [t.name for t in (thread, *server.live_threads()) if t.is_alive()]
        self._server = self._thread = None
        return left

    # -- where

    @property
    def port(self) -> int:
        """The port it listens on (kept after close, to name it in assertions)."""
        assert self._port is not None, "the server was never started"
        return self._port

    @property
    def url(self) -> str:
        """The load_model endpoint of this server."""
        return f"http://127.0.0.1:{self.port}{LOAD_MODEL_PATH}"

    @property
    def redirect_to(self) -> str:
        # The same host by default: a client that wrongly follows it reaches this server
        # (and is counted), never the Internet with the key in its body.
        return self._redirect_to or f"http://127.0.0.1:{self.port}/api/v4/moved/load_model"

    # -- what happened

    def requests(self, model_id: str | None = None) -> list[Seen]:
        """Every request received so far (of ``model_id`` only, if given), in order."""
        with self._lock:
            return [s for s in self._seen if model_id is None or s.model_id == model_id]

    def count(self, model_id: str | None = None) -> int:
        """How many load_model requests (all, or for ``model_id``) were received."""
        with self._lock:
            if model_id is None:
                return len(self._seen)
            return self._counts[model_id]

    def counts(self) -> dict[str, int]:
        """load_model requests per model_id."""
        with self._lock:
            return dict(self._counts)

    def loads(self) -> dict[str, int]:
        """Requests that were accepted (a load started), per model_id."""
        with self._lock:
            return dict(self._loads)

    @property
    def overwritten(self) -> list[str]:
        """Hand-loaded models replaced by a force_load "yes" request (must stay empty)."""
        with self._lock:
            return list(self._overwritten)

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` requests were received; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._seen) >= n, timeout)

    # -- inside

    def _decide(self, model_id: str | None, force_load: str | None) -> str:
        """What to answer this request for ``model_id`` (counted here)."""
        with self._lock:
            key = model_id or ""
            self._counts[key] += 1
            nth = self._counts[key]
            behaviour = self.per_model.get(key, self.behaviour)
            if behaviour == "hang":
                return "hang"
            if behaviour == "drip":
                return "drip"
            if behaviour == "redirect":
                return "redirect"
            if behaviour == "outage":
                return "503"
            if behaviour == "fail_once" and nth == 1:
                return self.fail_with
            if behaviour == "throttle" and nth <= self.throttle_times:
                return "throttle"
            if behaviour == "spam_once" and nth == 1:
                return "spam"
            if key in self.exists:
                if force_load != "yes":
                    return "exists"
                self._overwritten.append(key)
                self._loads[key] += 1
                return "overwritten"
            self._loads[key] += 1
            return "success"

    def _record(
        self,
        at: float,
        method: str,
        path: str,
        model_id: str | None,
        force_load: str | None,
        answer: str,
        status: int | None,
        body: Mapping[str, Any] | None,
    ) -> None:
        shown = None if body is None else {k: ("***" if k == "key" else v) for k, v in body.items()}
        with self._changed:
            self._seen.append(Seen(at, method, path, model_id, force_load, answer, status, shown))
            self._changed.notify_all()
