"""Secret masking: every interpolated value and the API key, in every output.

Secrets are registered once, when they are read, in one process-wide registry;
every path that writes text a person or a file sees (logging handlers, the error
handler, renderers, reports) passes it through :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse

MASK = "***"
# Very short values would mask ordinary words; a secret shorter than this is still
# never written on purpose, it is only not searched for in free text.
_MIN_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_variants: list[str] = []


def register_secret(value: str) -> None:
    """Remember ``value`` (and its JSON- and URL-escaped forms) as a secret."""
    if not value or len(value) < _MIN_LEN:
        return
    forms = {
        value,
        json.dumps(value)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
    }
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        merged = set(_variants) | {f for f in forms if len(f) >= _MIN_LEN}
        # Longest first, so a secret that contains another is masked whole.
        _variants[:] = sorted(merged, key=len, reverse=True)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    variants = _variants
    if not variants:
        return text
    for secret in variants:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def clear_secrets() -> None:
    """Forget every secret (tests and long-lived embedding only)."""
    with _lock:
        _secrets.clear()
        _variants.clear()


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _variants:
            record.msg = redact(record.getMessage())
            record.args = None
            for name in ("model_id",):
                value = getattr(record, name, None)
                if isinstance(value, str):
                    setattr(record, name, redact(value))
        return True
