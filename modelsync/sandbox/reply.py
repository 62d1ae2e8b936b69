"""What the sandbox answers to one request, before it is written to the socket."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """What to answer; ``status`` None means drop the connection without an answer."""

    status: int | None
    body: bytes
    outcome: str  # the request log's name for what happened
    content_type: str = "application/json"
    close: bool = False


def json_reply(status: int, obj: Any, outcome: str, *, close: bool = False) -> Reply:
    """A compact JSON answer."""
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode(), outcome, close=close)


def error_reply(status: int, message: Any, outcome: str, *, close: bool = False) -> Reply:
    """A ``{"status": "error", "message": ...}`` answer."""
    return json_reply(status, {"status": "error", "message": message}, outcome, close=close)
