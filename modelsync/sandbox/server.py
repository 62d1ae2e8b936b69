"""The HTTP side of the sandbox: the stdlib threading server, its handler, start and stop.

HTTP/1.1 with keep-alive. The handler reads a body (refusing chunked, bad or huge
lengths itself), hands it to :meth:`Routes.handle <modelsync.sandbox.routes.Routes.handle>`
and writes the answer in one write, or drops the connection for a ``reset`` fault.

- Every method but POST on a known path: 405 with ``Allow: POST`` (HEAD without a body);
  its body, if any, is read first so the connection stays in step.
- A body over :data:`~modelsync.sandbox.body.MAX_BODY`: read to its end and dropped (up to
  :data:`~modelsync.sandbox.body.MAX_DRAIN`), then a 400; the client reads its answer.
- A body cut off by its client (end of stream before Content-Length bytes, or nothing for
  the handler's timeout): no answer, one ``client_gone`` line in the request log.
- A request the stdlib parser refuses (bad request line, headers too long, an unknown
  method: 501) is answered in JSON too, and logged.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from modelsync.sandbox import body as bodies
from modelsync.sandbox.config import SandboxConfig, SandboxError
from modelsync.sandbox.log import RequestLog
from modelsync.sandbox.reply import Envelopes, Reply
from modelsync.sandbox.routes import Routes
from modelsync.sandbox.schema import ENDPOINTS, LOAD_MODEL_PATH

_ALLOW = (("Allow", "POST"),)
# Answers that never have a body (RFC 9110).
_NO_BODY_STATUSES = (204, 304)


class _ClientGone(Exception):
    """The client went away before its request body was complete."""


class Sandbox:
    """A local load_model API server, started in a background thread."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._routes = Routes(config)
        self._lock = threading.Lock()  # open connections, stopped
        self._connections: set[socket.socket] = set()
        self._stopped = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the address and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._stopped = False
        if self.config.request_log is not None:
            self._routes.request_log = RequestLog.open(self.config.request_log, self.config.api_key)
        try:
            self._server = _Server((self.config.host, self.config.port), self)
        except OSError as exc:
            self._close_log()
            raise SandboxError(
                f"sandbox: cannot listen on {self.config.host}:{self.config.port}: "
                f"{exc.strerror or exc} (choose another --port, or 0 for a free one)"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="modelsync-sandbox",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every open connection and the request log."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            self._stopped = True
            connections = list(self._connections)
        # Kept-alive connections would otherwise go on being served by their threads.
        for conn in connections:
            _shutdown_quietly(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_log()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("sandbox not started")
        host, port = self._server.server_address[:2]
        host = str(host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def load_model_url(self) -> str:
        """The load_model endpoint of this sandbox."""
        return self.url + LOAD_MODEL_PATH

    # -- inspection --------------------------------------------------------------------

    def models(self) -> dict[str, dict[str, Any]]:
        """Return a snapshot of the models held, by model_id, with status and load count."""
        return self._routes.models()

    def stats(self) -> dict[str, int]:
        """Return the request counters (requests, accepted, rejected_429, faults_5xx, ...)."""
        return self._routes.counters.snapshot()

    # -- for the handler ---------------------------------------------------------------

    def _close_log(self) -> None:
        request_log, self._routes.request_log = self._routes.request_log, None
        if request_log is not None:
            request_log.close()

    def _connection_opened(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopped:
                return False
            self._connections.add(conn)
        self._routes.counters.count("connections")
        return True

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _handle(self, path: str, raw: bytes | None, early: Reply | None) -> Reply:
        return self._routes.handle(path, raw, early)

    def _client_gone(self, path: str) -> None:
        self._routes.client_gone(path)

    @property
    def _replies(self) -> Envelopes:
        return self._routes.replies


def _shutdown_quietly(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    server_version = "modelsync-sandbox"
    sys_version = ""
    # Without it, Nagle + the client's delayed ACK can hold a small answer back ~40 ms.
    disable_nagle_algorithm = True
    # An idle kept-alive connection frees its thread after this long.
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        if not self.server.sandbox._connection_opened(self.connection):
            self.close_connection = True
            _shutdown_quietly(self.connection)

    def finish(self) -> None:
        self.server.sandbox._connection_closed(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # Silent: a line per request would cost more than the request under benchmark load.
        pass

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            raw, early = self._read_body()
        except _ClientGone:
            self._gone(path)
            return
        self._send(self.server.sandbox._handle(path, raw, early))

    def _not_allowed(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            _raw, early = self._read_body()
        except _ClientGone:
            self._gone(path)
            return
        if early is None and path in ENDPOINTS:
            message = f"Method {self.command} not allowed: use POST"
            early = self.server.sandbox._replies.error(405, message, "bad_method", headers=_ALLOW)
        self._send(self.server.sandbox._handle(path, None, early))

    do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = _not_allowed

    def _read_body(self) -> tuple[bytes | None, Reply | None]:
        """The body, or a transport-level answer; :class:`_ClientGone` if it was cut off."""
        replies = self.server.sandbox._replies
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None, replies.error(411, "Send a Content-Length.", "bad_length", close=True)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            return None, replies.error(400, "Bad Content-Length.", "bad_length", close=True)
        if length > bodies.MAX_BODY:
            # Read to its end, so the client reads the answer instead of a reset; beyond
            # MAX_DRAIN the connection is closed after the answer, unread.
            drained = length <= bodies.MAX_DRAIN
            if drained:
                self._drain(length)
            too_large = bodies.too_large(length)
            return None, replies.error(400, too_large, "too_large", close=not drained)
        try:
            raw = self.rfile.read(length)
        except OSError as exc:  # a reset, or no byte for `timeout` seconds
            raise _ClientGone from exc
        if len(raw) < length:
            raise _ClientGone
        return raw, None

    def _drain(self, length: int) -> None:
        left = length
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, bodies.DRAIN_CHUNK))
                if not chunk:
                    raise _ClientGone
                left -= len(chunk)
        except OSError as exc:
            raise _ClientGone from exc

    def _gone(self, path: str) -> None:
        self.close_connection = True
        self.server.sandbox._client_gone(path)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib parser's errors (400, 414, 431, 501...), in JSON and logged."""
        # `command` is set (with `path`) only once the request line was understood.
        path = self.path.split("?", 1)[0] if getattr(self, "command", None) else ""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        early = self.server.sandbox._replies.error(
            code, message or phrase, "bad_request", close=True
        )
        self._send(self.server.sandbox._handle(path, None, early))

    def _send(self, reply: Reply) -> None:
        if reply.status is None:
            self._reset()
            return
        head = [
            f"{self.protocol_version} {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        if reply.close:
            head.append("Connection: close")
            self.close_connection = True
        head_only = getattr(self, "command", None) == "HEAD"
        with_body = not head_only and reply.status not in _NO_BODY_STATUSES
        payload = reply.body if with_body else b""
        # One write per answer: a syscall less than send_response + end_headers + body.
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    def _reset(self) -> None:
        self.close_connection = True
        # Linger 0: the final close sends RST, the client gets a connection error at once.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _shutdown_quietly(self.connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when a parallel client opens its pool at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow where DNS is broken.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is ordinary for a server that injects faults.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def serve_forever(config: SandboxConfig, *, ready: Callable[[Sandbox], None] | None = None) -> None:
    """Run a sandbox until SIGINT or SIGTERM, then stop it cleanly."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    # Signal handlers can only be set from the main thread; elsewhere the caller's own
    # handling (KeyboardInterrupt) ends the wait.
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        with Sandbox(config) as sandbox:
            if ready is not None:
                ready(sandbox)
            # A timed wait, so the main thread regularly gets to run the signal handler.
            while not stop.wait(0.2):
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
