"""The request log: one JSON line per request received, with the key masked.

``{"time", "path", "model_id", "body", "status", "outcome"}``, in a file of mode 0600,
line-buffered, exactly one line per request received. A request whose client went away
before sending the whole body (fewer bytes than its Content-Length, then end of stream,
or no byte for the handler's timeout) gets one line too, ``"outcome": "client_gone"``
with ``status``, ``body`` and ``model_id`` null: it is not answered, and not counted as
a request. The key never reaches it: every ``key`` member becomes ``***``, the key sent
and the key accepted are masked wherever else they appear (a short key only where a value
is the key and nothing else), so are ``token=``/``key=``-like URL query values and the
process's registered secrets.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from modelsync.redact import Redactor
from modelsync.sandbox.body import parse
from modelsync.sandbox.config import SandboxError
from modelsync.sandbox.reply import Reply

# How much of an unparseable body the log keeps.
_RAW_CHARS = 4096
# The outcome of a request whose client went away before its body was complete.
CLIENT_GONE = "client_gone"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _redactor(*keys: str) -> Redactor:
    redactor = Redactor(url_credentials=True, masked_fields=("key",), include_registered=True)
    for key in keys:
        redactor.add(key, whole=True)
    return redactor


class RequestLog:
    """An open request log. Thread-safe; :meth:`close` makes later writes no-ops."""

    def __init__(self, handle: TextIO, api_key: str) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = handle
        self._api_key = api_key
        # The scrubber for a request that sends the accepted key (or none).
        self._redactor = _redactor(api_key)

    @classmethod
    def open(cls, path: Path, api_key: str) -> RequestLog:
        """Open (append to) the log at ``path``; a :class:`SandboxError` if it cannot."""
        try:
            # 0600: the log holds request bodies (URLs, names) even with the key masked.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            # Line-buffered, no fsync: a line per request must stay cheap; it lives until close().
            return cls(open(fd, "a", buffering=1, encoding="utf-8"), api_key)
        except OSError as exc:
            raise SandboxError(
                f"sandbox: cannot write the request log {path}: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def write(self, path: str, body: Any, raw: bytes | None, reply: Reply) -> None:
        """Log one request: its parsed ``body`` (or None), else the ``raw`` bytes received."""
        if self._file is None:
            return
        if body is None and raw:
            # Rejected before parsing (429, 404): parse here, off the answer's fast path,
            # with the same rules (hostile bodies refused, not raised).
            body, _problem = parse(raw)
        sent_key = body.get("key") if isinstance(body, dict) else None
        redactor = self._redactor
        if isinstance(sent_key, str) and sent_key and sent_key != self._api_key:
            redactor = _redactor(self._api_key, sent_key)
        if body is None and raw:
            logged_body: Any = redactor.raw_json(raw[:_RAW_CHARS].decode("utf-8", "replace"))
        else:
            logged_body = redactor.json(body)
        model_id = body.get("model_id") if isinstance(body, dict) else None
        entry = {
            "time": utc_now(),
            "path": redactor.text(path),
            "model_id": redactor.text(model_id) if isinstance(model_id, str) else None,
            "body": logged_body,
            "status": reply.status,
            "outcome": reply.outcome,
        }
        self._write_line(entry)

    def client_gone(self, path: str) -> None:
        """Log a request whose body was cut off by its client: no body, no answer."""
        if self._file is None:
            return
        # The partial body is not kept: a key cut in the middle would not be masked.
        entry = {
            "time": utc_now(),
            "path": self._redactor.text(path),
            "model_id": None,
            "body": None,
            "status": None,
            "outcome": CLIENT_GONE,
        }
        self._write_line(entry)

    def _write_line(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
