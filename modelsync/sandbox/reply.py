"""What the sandbox answers to one request, before it is written to the socket, and the
error envelopes it answers in.

Two styles (:class:`Envelopes`), chosen by ``SandboxConfig.legacy_errors``:

- published (the default): the Error schema of the published OpenAPI,
  ``{"status": "error", "message": "...", "code": N}`` with ``code`` the HTTP status, for
  bad parameters (400, ``message`` one string naming every field), a missing or wrong key
  (401) and every transport-level error (400 bad body, 404, 405, 411);
- legacy: the older envelopes a client must also read: bad parameters in an HTTP **200**
  body with Laravel's object message (``{"url": ["The url field is required."]}``), a
  missing key as a 200 with the ``messege`` spelling and a ``tip``, other errors
  ``{"status": "error", "message": "..."}`` without ``code``.

In both styles: 429 ``{"status", "message", "retry_after"}``; a refused load (the model
exists, ``force_load: "no"``) and a reload of an unknown model are HTTP 200
``{"status": "error", "message": "..."}``, which the published 200 schema allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelsync.sandbox.schema import MAX_FIELDS_NAMED, FieldErrors

INVALID_KEY = "Invalid API key"
_KEY_TIP = (
    "Send the API key in the JSON body as 'key' "
    "(the sandbox accepts the key it was started with, --api-key)."
)
_NO_KEY = (
    f"{INVALID_KEY}: no key was sent; send it in the JSON body as 'key' "
    "(the sandbox accepts the key it was started with, --api-key)."
)


@dataclass(frozen=True)
class Reply:
    """What to answer; ``status`` None means drop the connection without an answer."""

    status: int | None
    body: bytes
    outcome: str  # the request log's name for what happened
    content_type: str = "application/json"
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, obj: Any, outcome: str, *, close: bool = False) -> Reply:
    """A compact JSON answer."""
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode(), outcome, close=close)


def error_reply(status: int, message: Any, outcome: str, *, close: bool = False) -> Reply:
    """A ``{"status": "error", "message": ...}`` answer (no ``code``)."""
    return json_reply(status, {"status": "error", "message": message}, outcome, close=close)


def summary(errors: FieldErrors) -> str:
    """Every field error in one sentence-per-problem string, at most MAX_FIELDS_NAMED fields."""
    items = list(errors.values())
    text = " ".join(m for messages in items[:MAX_FIELDS_NAMED] for m in messages)
    more = len(items) - MAX_FIELDS_NAMED
    return f"{text} (and {more} more errors)" if more > 0 else text


class Envelopes:
    """The error answers of one sandbox, in the published style or the legacy one."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy

    def error(
        self,
        status: int,
        message: str,
        outcome: str,
        *,
        close: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        """An error answered with its HTTP status: ``code`` added unless legacy."""
        payload: dict[str, Any] = {"status": "error", "message": message}
        if not self.legacy:
            payload["code"] = status
        reply = json_reply(status, payload, outcome, close=close)
        return Reply(reply.status, reply.body, outcome, close=close, headers=headers)

    def bad_parameters(self, errors: FieldErrors) -> Reply:
        """Field errors: 400 with one message, or (legacy) 200 with the object message."""
        if self.legacy:
            named = dict(list(errors.items())[:MAX_FIELDS_NAMED])
            return error_reply(200, named, "validation_error")
        return self.error(400, summary(errors), "validation_error")

    def missing_key(self) -> Reply:
        """No ``key`` (or an empty one): 401, or (legacy) a 200 with ``messege``."""
        if self.legacy:
            payload = {"status": "error", "messege": "Invalid Api Key", "tip": _KEY_TIP}
            return json_reply(200, payload, "auth_missing")
        return self.error(401, _NO_KEY, "auth_missing")

    def wrong_key(self) -> Reply:
        """A key that is not the sandbox's: 401."""
        return self.error(401, INVALID_KEY, "auth_invalid")


def refused(message: str, outcome: str) -> Reply:
    """An error in an HTTP 200 body (both styles): ``{"status": "error", "message": ...}``."""
    return error_reply(200, message, outcome)
