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
import re
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Very short values would mask ordinary words; a secret shorter than this is still
# never written on purpose, it is only not searched for in free text (unless added
# with ``always=True``, as the API key is).
MIN_LEN = 4
# Deeper JSON values than this are replaced by a marker rather than walked.
MAX_JSON_DEPTH = 32
# Credentials people put in download URLs (Civitai's token=, HF/others' access_token=...).
_URL_CREDENTIAL = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|apikey|key|sig|signature)=)[^&#\s\"]+"
)


class Redactor:
    """A set of secrets and the masking of them. Thread-safe.

    Options, all off by default: ``url_credentials`` masks the value of ``token=``-like
    URL query parameters; ``masked_fields`` masks the whole value of JSON object members
    with those names (in :meth:`json`, and in :meth:`raw_json` for a document that may not
    parse); ``include_registered`` also masks the process's secrets
    (:func:`register_secret`).
    """

    def __init__(
        self,
        secrets: tuple[str, ...] = (),
        *,
        url_credentials: bool = False,
        masked_fields: Iterable[str] = (),
        include_registered: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._variants: list[str] = []
        self._whole: frozenset[str] = frozenset()
        self._url_credentials = url_credentials
        self._masked_fields = frozenset(masked_fields)
        self._raw_field: re.Pattern[str] | None = None
        if self._masked_fields:
            names = "|".join(re.escape(name) for name in sorted(self._masked_fields))
            self._raw_field = re.compile(rf'("(?:{names})"\s*:\s*")(?:[^"\\]|\\.)*(")')
        self._include_registered = include_registered
        for secret in secrets:
            self.add(secret, always=True)

    def add(self, value: str, *, always: bool = False, whole: bool = False) -> None:
        """Remember ``value`` (and its JSON- and URL-escaped forms) as a secret.

        ``always`` masks it even when it is shorter than :data:`MIN_LEN` (a key is a key).
        ``whole`` also masks a string that is exactly ``value``, however short: a short
        key is then not searched for in free text, where it would mask ordinary words,
        but a value that is the key and nothing else is masked.
        """
        if whole and value:
            with self._lock:
                self._whole = self._whole | {value}
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
            self._whole = frozenset()

    def __bool__(self) -> bool:
        """Whether :meth:`text` can change anything."""
        return bool(
            self._variants
            or self._whole
            or self._url_credentials
            or (self._include_registered and _shared)
        )

    def text(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``***``."""
        if text in self._whole:
            return MASK
        for secret in self._variants:
            if secret in text:
                text = text.replace(secret, MASK)
        if self._url_credentials:
            text = _URL_CREDENTIAL.sub(r"\1" + MASK, text)
        if self._include_registered:
            text = redact(text)
        return text

    def raw_json(self, text: str) -> str:
        """:meth:`text` for a JSON document that may not parse (truncated, malformed).

        A string value of a ``masked_fields`` member is masked wherever its closing quote
        is present; the rest of the document goes through :meth:`text`.
        """
        if self._raw_field is not None:
            text = self._raw_field.sub(r"\1" + MASK + r"\2", text)
        return self.text(text)

    def json(self, value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
        """A copy of a JSON value with secrets masked in every string (keys included).

        A member named in ``masked_fields`` has its value, whatever its type, replaced
        by ``***``.

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
                    if key in self._masked_fields:
                        copy[name] = MASK
                        continue
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
