"""Reading a request body: its size limits, and bytes -> a JSON value, hostile bodies included.

A body is JSON in UTF-8 (RFC 8259): bytes that are not UTF-8, a byte order mark, the
non-standard ``NaN``/``Infinity`` literals, a number too long to convert, or a document
nested deeper than the parser's recursion limit (``[`` 100,000 times) are all refused
with a reason, never an exception: the caller answers 400.
"""

from __future__ import annotations

import json
from typing import Any

# Far above any load_model body (a few hundred bytes); a longer body is refused.
MAX_BODY = 1024 * 1024
# A longer body than MAX_BODY is still read to its end (and dropped) up to this size, so
# that the client, still sending, reads the 400 instead of meeting a reset connection.
MAX_DRAIN = 64 * 1024 * 1024
# How much is read at a time while draining.
DRAIN_CHUNK = 64 * 1024

NOT_JSON = "The request body is not valid JSON."


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(raw: bytes) -> tuple[Any, str | None]:
    """The JSON value of ``raw`` and None, or None and why it is refused."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "The request body is not UTF-8 text."
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except RecursionError:
        return None, "The request body is nested too deeply."
    except ValueError:  # JSONDecodeError, and int() of a number over 4300 digits
        return None, NOT_JSON


def too_large(length: int) -> str:
    """Why a body of ``length`` bytes is refused."""
    return f"Request body too large: {length} bytes (at most {MAX_BODY})."
