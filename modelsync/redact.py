"""Secret masking: the one scrubber for every interpolated value, the API key, and passwords.

A :class:`Redactor` holds secrets and masks them in text and in JSON values. The process
has one shared instance: secrets are registered once, when they are read, and every
path that writes text a person or a file sees (logging handlers, the error handler,
renderers, reports, the HTTP client's messages) passes it through :func:`redact`. The
sandbox, a server with its own key, uses an instance of its own.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from typing import Any

MASK = "***"
# Very short values would mask ordinary words; a secret shorter than this is still
# never written on purpose, it is only not searched for in free text (unless added
# with ``always=True``, as the API key is).
MIN_LEN = 4
# Deeper JSON values than this are replaced by a marker rather than walked.
MAX_JSON_DEPTH = 32


class Redactor:
    """A set of secrets and the masking of them. Thread-safe."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._variants: list[str] = []
        for secret in secrets:
            self.add(secret, always=True)

    def add(self, value: str, *, always: bool = False) -> None:
        """Remember ``value`` (and its JSON- and URL-escaped forms) as a secret.

        ``always`` masks it even when it is shorter than :data:`MIN_LEN` (a key is a key).
        """
        if not value or (len(value) < MIN_LEN and not always):
            return
        forms = {
            value,
            json.dumps(value)[1:-1],
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value, safe=""),
        }
        with self._lock:
            if value in self._secrets:
                return
            self._secrets.add(value)
            keep = {f for f in forms if len(f) >= MIN_LEN or (always and f)}
            # Longest first, so a secret that contains another is masked whole.
            self._variants = sorted(set(self._variants) | keep, key=len, reverse=True)

    def clear(self) -> None:
        """Forget every secret."""
        with self._lock:
            self._secrets.clear()
            self._variants = []

    def __bool__(self) -> bool:
        return bool(self._variants)

    def text(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``***``."""
        for secret in self._variants:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def json(self, value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
        """A copy of a JSON value with secrets masked in every string (keys included).

        Iterative, so a hostile document nested far deeper than the interpreter's
        recursion limit is cut at ``max_depth`` (``"…"``) instead of crashing.
        """
        root: list[Any] = [None]
        stack: list[tuple[Any, list[Any] | dict[str, Any], Any, int]] = [(value, root, 0, 0)]
        while stack:
            item, parent, slot, depth = stack.pop()
            if isinstance(item, str):
                parent[slot] = self.text(item)
            elif isinstance(item, dict | list) and depth >= max_depth:
                parent[slot] = "…"
            elif isinstance(item, dict):
                copy: dict[str, Any] = {}
                parent[slot] = copy
                for key, child in item.items():
                    name = self.text(str(key))
                    copy[name] = None
                    stack.append((child, copy, name, depth + 1))
            elif isinstance(item, list):
                items: list[Any] = [None] * len(item)
                parent[slot] = items
                stack.extend((child, items, i, depth + 1) for i, child in enumerate(item))
            else:
                parent[slot] = item
        return root[0]


_shared = Redactor()


def register_secret(value: str, *, always: bool = False) -> None:
    """Remember ``value`` as a secret of this process (see :meth:`Redactor.add`)."""
    _shared.add(value, always=always)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    return _shared.text(text) if _shared else text


def redact_json(value: Any) -> Any:
    """A copy of a JSON value with every registered secret masked."""
    return _shared.json(value)


def clear_secrets() -> None:
    """Forget every secret (tests and long-lived embedding only)."""
    _shared.clear()


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _shared:
            record.msg = redact(record.getMessage())
            record.args = None
            value = getattr(record, "model_id", None)
            if isinstance(value, str):
                record.model_id = redact(value)
        return True
