"""The local API sandbox: a stdlib HTTP server that behaves like the load_model API family.

It serves the paths of API_NOTES.md on 127.0.0.1 (HTTP/1.1, keep-alive):

- ``POST /api/v3/load_model`` (and ``/api/v4/dreambooth/load_model``);
- ``POST /api/v4/dreambooth/model_list`` -> a JSON array of the models it holds;
- ``POST /api/v6/images/model_reload`` (and ``/api/v4/dreambooth/model_reload``).

Any other path is a 404 JSON error; another method on a known path is a 405.

Envelopes, chosen so that a client meets every style the real service uses:

- body not JSON, or not an object -> HTTP 400 ``{"status": "error", "message": "..."}``;
- ``key`` missing or empty -> HTTP **200** ``{"status": "error", "messege": "Invalid Api Key",
  "tip": "..."}`` (an error in a 200 body, with the old ``messege`` spelling);
- ``key`` wrong -> HTTP 401 ``{"status": "error", "message": "Invalid API key"}``;
- a field missing or invalid -> HTTP 200 with Laravel's object message, every field at once:
  ``{"status": "error", "message": {"url": ["The url field is required."]}}``;
- load_model of a ``model_id`` it already holds with ``force_load: "no"`` -> HTTP 200
  ``{"status": "error", "message": "Model id already exists"}``; with ``"yes"`` (the default,
  as in the API's OpenAPI) the model loads again;
- success -> ``{"status": "success", "message": "model load started"}``; the model is then
  ``loading`` for ``load_seconds`` and ``model_ready`` after;
- more than ``max_queued`` requests in flight (any endpoint, this one included) -> HTTP 429
  ``{"status": "error", "message": "Rate limit exceeded. Maximum N queued requests allowed.",
  "retry_after": R}``. A rejected request is answered at once, without the latency.

``latency_ms`` is slept before every load_model answer past the rate gate, outside any lock,
so concurrent requests overlap and the in-flight window includes the sleep.

Faults: one draw per authenticated, valid load_model request, from one ``random.Random(seed)``,
so a seed gives the same fault sequence for the same request sequence. The rates partition
[0, 1) and must add up to at most 1:

- ``fail_rate`` -> HTTP 500 or 503 with a JSON error; the model is not recorded;
- ``reset_rate`` -> the request is processed (the model IS recorded), then the connection is
  dropped without an answer: the case where a retry repeats something that reached the server;
- ``garbage_rate`` -> HTTP 200 with an HTML page, an empty body or truncated JSON; the model is
  not recorded.

``request_log`` gets one JSON line per request received (mode 0600, line-buffered):
``{"time", "path", "model_id", "body", "status", "outcome"}``. The key never reaches it: every
``key`` field becomes ``***``, the key sent and the key accepted are masked wherever else they
appear, so are ``token=``/``key=``-like URL query values and the process's registered secrets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from modelsync import redact
from modelsync.errors import ExitCode, ModelsyncError, UsageError

__all__ = [
    "LOAD_MODEL_PATH",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "serve_forever",
]

log = logging.getLogger(__name__)

LOAD_MODEL_PATH = "/api/v3/load_model"
_ENDPOINTS = {
    LOAD_MODEL_PATH: "load_model",
    "/api/v4/dreambooth/load_model": "load_model",
    "/api/v4/dreambooth/model_list": "model_list",
    "/api/v6/images/model_reload": "model_reload",
    "/api/v4/dreambooth/model_reload": "model_reload",
}

MODEL_FORMATS = ("diffusers", "safetensors", "ckpt")
MODEL_CATEGORIES = (
    "stable_diffusion",
    "stable_diffusion_xl",
    "controlnet",
    "lora",
    "embeddings",
    "vae",
    "flux",
    "z_image",
)
_REQUIRED = ("url", "model_id", "model_format", "model_category", "model_name")
_ENUMS: dict[str, tuple[str, ...]] = {
    "model_format": MODEL_FORMATS,
    "model_category": MODEL_CATEGORIES,
    "revision": ("fp16", "fp32"),
    "model_visibility": ("private", "public"),
    "force_load": ("yes", "no"),
    "hf_upload": ("yes", "no"),
}
# The API documents model_subcategory as nullable (one sample sends null).
_NULLABLE_STRINGS = ("model_subcategory", "model_image")
_FIELDS = (
    *_REQUIRED,
    "revision",
    "model_visibility",
    "force_load",
    "hf_upload",
    *_NULLABLE_STRINGS,
)

# Far above any load_model body; stops a runaway client from filling memory.
_MAX_BODY = 1024 * 1024
# How much of an unparseable body the request log keeps.
_LOG_RAW_CHARS = 4096
_MASK = "***"
# Short keys would mask ordinary words if searched as substrings; they are matched whole.
_MIN_SUBSTRING_SECRET = 4
# Credentials people put in download URLs (Civitai's token=, HF/others' access_token=...).
_URL_SECRET = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|apikey|key|sig|signature)=)[^&#\s\"]+"
)
_RAW_KEY_FIELD = re.compile(r'("key"\s*:\s*")(?:[^"\\]|\\.)*(")')

_STAT_NAMES = (
    "requests",
    "connections",
    "load_model",
    "model_list",
    "model_reload",
    "accepted",
    "already_exists",
    "reloaded",
    "validation_errors",
    "bad_requests",
    "auth_errors",
    "not_found",
    "rejected_429",
    "faults_5xx",
    "resets",
    "garbage",
    "internal_errors",
    "max_in_flight",
)

_GARBAGE: tuple[tuple[str, bytes], ...] = (
    (
        "text/html; charset=utf-8",
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        b"<body><h1>502 Bad Gateway</h1><hr><p>upstream error</p></body></html>",
    ),
    ("application/json", b""),
    ("application/json", b'{"status":"succ'),
)
_SERVER_ERRORS: tuple[tuple[int, dict[str, Any]], ...] = (
    (500, {"status": "error", "message": "Server Error"}),
    (503, {"status": "error", "message": "Service temporarily unavailable."}),
)


class SandboxError(ModelsyncError):
    """The sandbox could not start (port taken, request log not writable...)."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves: address, key, timing, limits and injected faults."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    api_key: str = "sandbox"
    latency_ms: float = 0.0
    load_seconds: float = 2.0
    max_queued: int = 10
    retry_after: int = 1
    fail_rate: float = 0.0
    reset_rate: float = 0.0
    garbage_rate: float = 0.0
    seed: int | None = None
    request_log: Path | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0-65535, got {self.port}")
        if not self.api_key:
            problems.append("api_key must not be empty")
        for name in ("latency_ms", "load_seconds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_queued < 1:
            problems.append(f"max_queued must be >= 1, got {self.max_queued}")
        if self.retry_after < 0:
            problems.append(f"retry_after must be >= 0, got {self.retry_after}")
        rates = ("fail_rate", "reset_rate", "garbage_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        # The rates partition one draw, so together they cannot exceed certainty.
        if sum(getattr(self, name) for name in rates) > 1.0 + 1e-9:
            problems.append("fail_rate + reset_rate + garbage_rate must be at most 1")
        if problems:
            raise UsageError("sandbox: " + "; ".join(problems))


@dataclass(frozen=True)
class _Held:
    """One model the sandbox holds."""

    fields: dict[str, Any]
    created_at: str
    updated_at: str
    loaded_at: float  # time.monotonic() of the last (re)load
    loads: int
    reloads: int = 0


@dataclass(frozen=True)
class _Reply:
    """What to answer; ``status`` None means drop the connection without an answer."""

    status: int | None
    body: bytes
    outcome: str
    content_type: str = "application/json"
    close: bool = False


def _json_reply(status: int, obj: Any, outcome: str, *, close: bool = False) -> _Reply:
    return _Reply(status, json.dumps(obj, separators=(",", ":")).encode(), outcome, close=close)


def _error(status: int, message: Any, outcome: str, *, close: bool = False) -> _Reply:
    return _json_reply(status, {"status": "error", "message": message}, outcome, close=close)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _label(field: str) -> str:
    # Laravel names a field in its messages with spaces for underscores.
    return field.replace("_", " ")


def _validate(body: dict[str, Any], required: tuple[str, ...]) -> dict[str, list[str]]:
    """Laravel-style field errors for a load_model (or model_reload) body."""
    errors: dict[str, list[str]] = {}
    for name in required:
        value = body.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            errors[name] = [f"The {_label(name)} field is required."]
        elif not isinstance(value, str):
            errors[name] = [f"The {_label(name)} must be a string."]
    for name, allowed in _ENUMS.items():
        if name in errors or name not in body:
            continue
        if body[name] not in allowed:
            errors[name] = [f"The selected {_label(name)} is invalid."]
    for name in _NULLABLE_STRINGS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = [f"The {_label(name)} must be a string."]
    return errors


class Sandbox:
    """A local load_model API server, started in a background thread."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.Lock()  # counters, in-flight count, open connections
        self._models_lock = threading.Lock()
        self._rng_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._counters = dict.fromkeys(_STAT_NAMES, 0)
        self._in_flight = 0
        self._models: dict[str, _Held] = {}
        self._connections: set[socket.socket] = set()
        self._stopped = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._log_file: TextIO | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the address and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._stopped = False
        if self.config.request_log is not None:
            self._log_file = self._open_log(self.config.request_log)
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
        now = time.monotonic()
        with self._models_lock:
            held = list(self._models.items())
        return {model_id: self._describe(model_id, h, now) for model_id, h in held}

    def stats(self) -> dict[str, int]:
        """Return the request counters (requests, accepted, rejected_429, faults_5xx, ...)."""
        with self._lock:
            counters = dict(self._counters)
            counters["in_flight"] = self._in_flight
        return counters

    def _describe(self, model_id: str, held: _Held, now: float) -> dict[str, Any]:
        ready = now - held.loaded_at >= self.config.load_seconds
        return {
            **held.fields,
            "model_id": model_id,
            "status": "model_ready" if ready else "loading",
            "loads": held.loads,
            "reloads": held.reloads,
            "created_at": held.created_at,
            "updated_at": held.updated_at,
        }

    # -- request handling ------------------------------------------------------------------

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counters[name] += 1

    def _connection_opened(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopped:
                return False
            self._connections.add(conn)
            self._counters["connections"] += 1
            return True

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _handle(self, path: str, raw: bytes | None, early: _Reply | None) -> _Reply:
        """Answer one request; ``early`` is a transport-level answer (bad length...)."""
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
            self._counters["requests"] += 1
            if in_flight > self._counters["max_in_flight"]:
                self._counters["max_in_flight"] = in_flight
        body: Any = None
        try:
            try:
                if early is not None:
                    self._count("bad_requests")
                    reply = early
                else:
                    body, reply = self._route(path, raw or b"", in_flight)
            except Exception:
                log.exception("sandbox: internal error on %s", path)
                self._count("internal_errors")
                reply = _error(500, "sandbox internal error", "internal_error")
            # Logged before answering: once a client has its answer, the line is there.
            if self._log_file is not None:
                self._write_log(path, body, raw, reply)
            return reply
        finally:
            with self._lock:
                self._in_flight -= 1

    def _route(self, path: str, raw: bytes, in_flight: int) -> tuple[Any, _Reply]:
        endpoint = _ENDPOINTS.get(path)
        if endpoint is None:
            self._count("not_found")
            return None, _error(404, f"Not found: {path}", "not_found")
        self._count(endpoint)
        if in_flight > self.config.max_queued:
            self._count("rejected_429")
            limit = self.config.max_queued
            return None, _json_reply(
                429,
                {
                    "status": "error",
                    "message": f"Rate limit exceeded. Maximum {limit} queued requests allowed.",
                    "retry_after": self.config.retry_after,
                },
                "rate_limited",
            )
        if endpoint == "load_model" and self.config.latency_ms > 0:
            time.sleep(self.config.latency_ms / 1000.0)
        try:
            body = json.loads(raw)
        except ValueError:
            self._count("bad_requests")
            return None, _error(400, "The request body is not valid JSON.", "bad_json")
        if not isinstance(body, dict):
            self._count("bad_requests")
            return body, _error(400, "The request body must be a JSON object.", "bad_json")
        auth = self._check_key(body)
        if auth is not None:
            return body, auth
        if endpoint == "load_model":
            return body, self._load_model(body)
        if endpoint == "model_list":
            return body, self._model_list()
        return body, self._model_reload(body)

    def _check_key(self, body: dict[str, Any]) -> _Reply | None:
        key = body.get("key")
        if key is None or key == "":
            self._count("auth_errors")
            return _json_reply(
                200,
                {
                    "status": "error",
                    "messege": "Invalid Api Key",
                    "tip": "Send the API key in the JSON body as 'key' "
                    "(the sandbox accepts the key it was started with, --api-key).",
                },
                "auth_missing",
            )
        if key != self.config.api_key:
            self._count("auth_errors")
            return _error(401, "Invalid API key", "auth_invalid")
        return None

    def _draw_fault(self) -> tuple[str | None, float]:
        # Always two draws per request, so the sequence depends only on the request count.
        with self._rng_lock:
            u = self._rng.random()
            pick = self._rng.random()
        config = self.config
        for kind, rate in (
            ("fail", config.fail_rate),
            ("reset", config.reset_rate),
            ("garbage", config.garbage_rate),
        ):
            if u < rate:
                return kind, pick
            u -= rate
        return None, pick

    def _load_model(self, body: dict[str, Any]) -> _Reply:
        errors = _validate(body, _REQUIRED)
        if errors:
            self._count("validation_errors")
            return _error(200, errors, "validation_error")
        fault, pick = self._draw_fault()
        if fault == "fail":
            self._count("faults_5xx")
            status, payload = _SERVER_ERRORS[int(pick * len(_SERVER_ERRORS))]
            return _json_reply(status, payload, "fault_5xx")
        if fault == "garbage":
            self._count("garbage")
            content_type, garbage = _GARBAGE[int(pick * len(_GARBAGE))]
            return _Reply(200, garbage, "garbage", content_type=content_type)
        reply = self._record(body)
        if fault == "reset":
            self._count("resets")
            # The work is done and recorded; only the answer is lost.
            return _Reply(None, b"", "reset", close=True)
        return reply

    def _record(self, body: dict[str, Any]) -> _Reply:
        model_id: str = body["model_id"]
        force_load = body.get("force_load", "yes")
        fields = {name: body[name] for name in _FIELDS if name in body}
        now, stamp = time.monotonic(), _utc_now()
        with self._models_lock:
            held = self._models.get(model_id)
            if held is not None and force_load == "no":
                exists = True
            else:
                exists = False
                if held is None:
                    held = _Held(fields, stamp, stamp, now, 1)
                else:
                    held = replace(
                        held, fields=fields, updated_at=stamp, loaded_at=now, loads=held.loads + 1
                    )
                self._models[model_id] = held
        if exists:
            self._count("already_exists")
            return _error(200, "Model id already exists", "already_exists")
        self._count("accepted")
        return _json_reply(200, {"status": "success", "message": "model load started"}, "accepted")

    def _model_list(self) -> _Reply:
        now = time.monotonic()
        with self._models_lock:
            held = list(self._models.items())
        listing = []
        for model_id, h in held:
            described = self._describe(model_id, h, now)
            listing.append(
                {
                    "model_id": model_id,
                    "status": described["status"],
                    "created_at": h.created_at,
                    "model_name": h.fields.get("model_name", model_id),
                    "description": "",
                    "screenshots": h.fields.get("model_image") or "",
                    "model_category": h.fields.get("model_category"),
                }
            )
        return _json_reply(200, listing, "listed")

    def _model_reload(self, body: dict[str, Any]) -> _Reply:
        errors = _validate(body, ("model_id",))
        if errors:
            self._count("validation_errors")
            return _error(200, errors, "validation_error")
        model_id: str = body["model_id"]
        stamp = _utc_now()
        with self._models_lock:
            held = self._models.get(model_id)
            if held is not None:
                self._models[model_id] = replace(
                    held, updated_at=stamp, loaded_at=time.monotonic(), reloads=held.reloads + 1
                )
        if held is None:
            return _error(200, "Model id not found", "reload_not_found")
        self._count("reloaded")
        return _json_reply(
            200, {"status": "success", "message": "Model reload started"}, "reloaded"
        )

    # -- request log -------------------------------------------------------------------

    @staticmethod
    def _open_log(path: Path) -> TextIO:
        try:
            # 0600: the log holds request bodies (URLs, names) even with the key masked.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            # Line-buffered, no fsync: a line per request must stay cheap; it lives until stop().
            return open(fd, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise SandboxError(
                f"sandbox: cannot write the request log {path}: {exc.strerror or exc}"
            ) from exc

    def _close_log(self) -> None:
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _write_log(self, path: str, body: Any, raw: bytes | None, reply: _Reply) -> None:
        if body is None and raw:
            # Rejected before parsing (429, 404): parse here, off the answer's fast path.
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        sent_key = body.get("key") if isinstance(body, dict) else None
        secrets = [self.config.api_key]
        if isinstance(sent_key, str) and sent_key:
            secrets.append(sent_key)
        scrub = _Scrubber(secrets)
        if body is None and raw:
            logged_body: Any = scrub.raw(raw[:_LOG_RAW_CHARS].decode("utf-8", "replace"))
        else:
            logged_body = scrub.value(body)
        model_id = body.get("model_id") if isinstance(body, dict) else None
        entry = {
            "time": _utc_now(),
            "path": scrub.value(path),
            "model_id": scrub.value(model_id) if isinstance(model_id, str) else None,
            "body": logged_body,
            "status": reply.status,
            "outcome": reply.outcome,
        }
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.write(line)


class _Scrubber:
    """Masks the key (sent and accepted) and URL credentials in what the log writes."""

    def __init__(self, secrets: list[str]) -> None:
        self._whole = set(secrets)
        # Longest first, so a key that contains another is masked whole.
        self._substrings = sorted(
            {s for s in secrets if len(s) >= _MIN_SUBSTRING_SECRET}, key=len, reverse=True
        )

    def text(self, value: str) -> str:
        if value in self._whole:
            return _MASK
        for secret in self._substrings:
            if secret in value:
                value = value.replace(secret, _MASK)
        return redact.redact(_URL_SECRET.sub(r"\1" + _MASK, value))

    def raw(self, value: str) -> str:
        return self.text(_RAW_KEY_FIELD.sub(r"\1" + _MASK + r"\2", value))

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(str(k)): _MASK if k == "key" else self.value(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


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
        raw, early = self._read_body()
        reply = self.server.sandbox._handle(path, raw, early)
        self._send(reply)

    def _not_allowed(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in _ENDPOINTS:
            early = _error(405, f"Method {self.command} not allowed: use POST", "bad_method")
        else:
            early = None
        self._send(self.server.sandbox._handle(path, None, early))

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _read_body(self) -> tuple[bytes | None, _Reply | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None, _error(411, "Send a Content-Length.", "bad_length", close=True)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            return None, _error(400, "Bad Content-Length.", "bad_length", close=True)
        if length > _MAX_BODY:
            return None, _error(413, "Request body too large.", "too_large", close=True)
        return self.rfile.read(length), None

    def _send(self, reply: _Reply) -> None:
        if reply.status is None:
            self._reset()
            return
        head = [
            f"{self.protocol_version} {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
        ]
        if reply.close:
            head.append("Connection: close")
            self.close_connection = True
        # One write per answer: a syscall less than send_response + end_headers + body.
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)

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
