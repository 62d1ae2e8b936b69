"""Injected faults: one seeded draw per valid load_model request, and the answers they give.

The rates of :class:`~modelsync.sandbox.config.SandboxConfig` partition [0, 1): ``fail``
(HTTP 500 or 503), ``reset`` (the connection dropped after the request is processed),
``garbage`` (HTTP 200 with an unreadable body), or none.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Literal

from modelsync.sandbox.config import SandboxConfig
from modelsync.sandbox.reply import Reply, json_reply

Fault = Literal["fail", "reset", "garbage"]

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

# The work is done and recorded; only the answer is lost.
RESET = Reply(None, b"", "reset", close=True)


class Faults:
    """The fault draws of one sandbox, from one ``random.Random(seed)``. Thread-safe."""

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._rates: tuple[tuple[Fault, float], ...] = (
            ("fail", config.fail_rate),
            ("reset", config.reset_rate),
            ("garbage", config.garbage_rate),
        )

    def draw(self) -> tuple[Fault | None, float]:
        """The fault for the next request (or None) and a number in [0, 1) to pick its form."""
        # Always two draws per request, so the sequence depends only on the request count.
        with self._lock:
            u = self._rng.random()
            pick = self._rng.random()
        for kind, rate in self._rates:
            if u < rate:
                return kind, pick
            u -= rate
        return None, pick


def server_error(pick: float) -> Reply:
    """A 500 or 503 with a JSON error body."""
    status, payload = _SERVER_ERRORS[int(pick * len(_SERVER_ERRORS))]
    return json_reply(status, payload, "fault_5xx")


def garbage(pick: float) -> Reply:
    """An HTTP 200 with an HTML page, an empty body or truncated JSON."""
    content_type, body = _GARBAGE[int(pick * len(_GARBAGE))]
    return Reply(200, body, "garbage", content_type=content_type)
