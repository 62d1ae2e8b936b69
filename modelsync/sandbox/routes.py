"""The behaviour of each endpoint: the rate gate, the key, load_model, model_list, model_reload.

:class:`Routes` answers one request given its path and body bytes, with no knowledge of
sockets; it keeps the models it was asked to load, the request counters, and writes the
request log. The HTTP server in :mod:`modelsync.sandbox.server` calls :meth:`Routes.handle`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from modelsync.sandbox import body as bodies
from modelsync.sandbox import faults
from modelsync.sandbox.config import SandboxConfig
from modelsync.sandbox.log import RequestLog, utc_now
from modelsync.sandbox.reply import Envelopes, Reply, json_reply, refused
from modelsync.sandbox.schema import ENDPOINTS, check_reload, published_request

log = logging.getLogger("modelsync.sandbox")

STAT_NAMES = (
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
    "client_gone",
    "max_in_flight",
)


class Counters:
    """The request counters and the number of requests in flight. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self._in_flight = 0

    def count(self, *names: str) -> None:
        """Add one to each counter named."""
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def enter(self) -> int:
        """Count a request received; return how many are in flight, this one included."""
        with self._lock:
            self._in_flight += 1
            self._counts["requests"] += 1
            if self._in_flight > self._counts["max_in_flight"]:
                self._counts["max_in_flight"] = self._in_flight
            return self._in_flight

    def leave(self) -> None:
        """Count a request answered."""
        with self._lock:
            self._in_flight -= 1

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters, with ``in_flight``."""
        with self._lock:
            counts = dict(self._counts)
            counts["in_flight"] = self._in_flight
        return counts


@dataclass(frozen=True)
class _Held:
    """One model the sandbox holds."""

    fields: dict[str, Any]
    created_at: str
    updated_at: str
    loaded_at: float  # time.monotonic() of the last (re)load
    loads: int
    reloads: int = 0


class Routes:
    """The endpoints of one sandbox, its models, counters and request log."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.counters = Counters()
        # Set while the sandbox runs with --request-log.
        self.request_log: RequestLog | None = None
        self.replies = Envelopes(config.legacy_errors)
        self._request = published_request()
        # The load_model fields a held model keeps (the key is not one of them).
        self._kept = tuple(name for name in self._request.names if name != "key")
        self._faults = faults.Faults(config)
        self._models_lock = threading.Lock()
        self._models: dict[str, _Held] = {}

    # -- inspection --------------------------------------------------------------------

    def models(self) -> dict[str, dict[str, Any]]:
        """A snapshot of the models held, by model_id, with status and load count."""
        now = time.monotonic()
        with self._models_lock:
            held = list(self._models.items())
        return {model_id: self._describe(model_id, h, now) for model_id, h in held}

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

    # -- one request -------------------------------------------------------------------

    def handle(self, path: str, raw: bytes | None, early: Reply | None) -> Reply:
        """Answer one request; ``early`` is a transport-level answer (bad length...)."""
        in_flight = self.counters.enter()
        body: Any = None
        try:
            try:
                if early is not None:
                    self.counters.count("bad_requests")
                    reply = early
                else:
                    body, reply = self._route(path, raw or b"", in_flight)
            except Exception:
                log.exception("sandbox: internal error on %s", path)
                self.counters.count("internal_errors")
                reply = self.replies.error(500, "sandbox internal error", "internal_error")
            # Logged before answering: once a client has its answer, the line is there.
            request_log = self.request_log
            if request_log is not None:
                try:
                    request_log.write(path, body, raw, reply)
                except Exception:
                    # A line lost is a bug to see; the client still gets its answer.
                    log.exception("sandbox: cannot log a request to %s", path)
                    self.counters.count("internal_errors")
            return reply
        finally:
            self.counters.leave()

    def client_gone(self, path: str) -> None:
        """Note a request whose client went away before its body was complete."""
        request_log = self.request_log
        if request_log is not None:
            request_log.client_gone(path)
        # Counted after the line is written: a test that sees the count sees the line.
        self.counters.count("client_gone")

    def _route(self, path: str, raw: bytes, in_flight: int) -> tuple[Any, Reply]:
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            self.counters.count("not_found")
            return None, self.replies.error(404, f"Not found: {path[:200]}", "not_found")
        self.counters.count(endpoint)
        if in_flight > self.config.max_queued:
            self.counters.count("rejected_429")
            return None, self._rate_limited()
        if endpoint == "load_model" and self.config.latency_ms > 0:
            time.sleep(self.config.latency_ms / 1000.0)
        body, problem = bodies.parse(raw)
        if problem is not None or not isinstance(body, dict):
            self.counters.count("bad_requests")
            why = problem or "The request body must be a JSON object."
            return body, self.replies.error(400, why, "bad_json")
        auth = self._check_key(body)
        if auth is not None:
            return body, auth
        if endpoint == "load_model":
            return body, self._load_model(body)
        if endpoint == "model_list":
            return body, self._model_list()
        return body, self._model_reload(body)

    def _rate_limited(self) -> Reply:
        limit = self.config.max_queued
        return json_reply(
            429,
            {
                "status": "error",
                "message": f"Rate limit exceeded. Maximum {limit} queued requests allowed.",
                "retry_after": self.config.retry_after,
            },
            "rate_limited",
        )

    def _check_key(self, body: dict[str, Any]) -> Reply | None:
        # Checked before the fields: a body with no key and bad fields is a 401.
        key = body.get("key")
        if key is None or key == "":
            self.counters.count("auth_errors")
            return self.replies.missing_key()
        if key != self.config.api_key:
            self.counters.count("auth_errors")
            return self.replies.wrong_key()
        return None

    # -- the endpoints -----------------------------------------------------------------

    def _load_model(self, body: dict[str, Any]) -> Reply:
        errors = self._request.check(body, skip=("key",))
        if errors:
            self.counters.count("validation_errors")
            return self.replies.bad_parameters(errors)
        fault, pick = self._faults.draw()
        if fault == "fail":
            self.counters.count("faults_5xx")
            return faults.server_error(pick)
        if fault == "garbage":
            self.counters.count("garbage")
            return faults.garbage(pick)
        reply = self._record(body)
        if fault == "reset":
            self.counters.count("resets")
            return faults.RESET
        return reply

    def _record(self, body: dict[str, Any]) -> Reply:
        model_id: str = body["model_id"]
        force_load = body.get("force_load", "yes")
        fields = {name: body[name] for name in self._kept if name in body}
        now, stamp = time.monotonic(), utc_now()
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
            self.counters.count("already_exists")
            return refused("Model id already exists", "already_exists")
        self.counters.count("accepted")
        return json_reply(200, {"status": "success", "message": "model load started"}, "accepted")

    def _model_list(self) -> Reply:
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
        return json_reply(200, listing, "listed")

    def _model_reload(self, body: dict[str, Any]) -> Reply:
        errors = check_reload(body)
        if errors:
            self.counters.count("validation_errors")
            return self.replies.bad_parameters(errors)
        model_id: str = body["model_id"]
        stamp = utc_now()
        with self._models_lock:
            held = self._models.get(model_id)
            if held is not None:
                self._models[model_id] = replace(
                    held, updated_at=stamp, loaded_at=time.monotonic(), reloads=held.reloads + 1
                )
        if held is None:
            return refused("Model id not found", "reload_not_found")
        self.counters.count("reloaded")
        return json_reply(200, {"status": "success", "message": "Model reload started"}, "reloaded")
