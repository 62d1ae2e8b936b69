"""The load_model answer: its envelopes, and the classification of DESIGN §4 (pure).

:func:`classify` turns one HTTP answer into a :class:`Verdict`. Errors arrive as HTTP
4xx/5xx *or* inside HTTP 200 bodies, with ``message`` (or the older ``messege``) a string
or an object of field errors; this module reads both styles.
"""

from __future__ import annotations

import datetime
import http
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from modelsync.redact import redact, redact_json

Kind = Literal["submitted", "retryable", "failed", "auth", "account", "redirect"]

# A load_model answer is a few hundred bytes; reading more would only let a broken
# proxy or a hostile server fill memory. A longer body is classified as cut short.
MAX_BODY_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
# Server text goes into reports and logs: keep a runaway message readable.
_MAX_MESSAGE = 1000
_MAX_SNIPPET = 80
# Redact a window wider than any snippet, so a secret cut by the window edge is
# never inside the part that is kept.
_SNIPPET_WINDOW = 8192

_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")
_SPACES_RE = re.compile(r"\s+")
# The spam filter names its wait in words: "please wait for 30 seconds and try again".
_WAIT_WORDS_RE = re.compile(r"\bwait(?: for)? (\d{1,5}(?:\.\d+)?) ?(?:s|secs?|seconds?)\b")

# Phrases are matched on lower-cased text where `_`/`-` became spaces, so
# "Invalid Api Key", "invalid_api_key" and "INVALID-API-KEY" all match.
_AUTH_PHRASES = ("invalid api key", "api key is invalid", "invalid or missing api key")
_ACCOUNT_PHRASES = (
    "insufficient credit",
    "model credit",
    "not enough credit",
    "out of credit",
)
_PACING_PHRASES = (
    "rate limit",
    "too many requests",
    "spam filter",
    "same request multiple times",
)
_RETRY_PHRASES = ("try again", *_PACING_PHRASES)
EXISTS_PHRASES = (
    "already exist",
    "already loaded",
    "already uploaded",
    "already been taken",
    "already taken",
    "already in use",
)


@dataclass(frozen=True)
class Verdict:
    """The classification of one HTTP answer (or transport error)."""

    kind: Kind
    http_status: int | None
    message: str
    retry_after: float | None
    response: Mapping[str, Any] | None
    # True only when the request certainly never reached the server (no connection).
    unsent: bool = False
    aborted: str | None = None  # why this transport ended the attempt itself, if it did
    # The server asks to slow down (a 429, a rate limit or spam filter in words): pacing,
    # which uses no attempt and says nothing about the API being down.
    pacing: bool = False
    # The server said in its own words that it did not act ("Failed, Try Again").
    declined: bool = False

    @property
    def may_have_loaded(self) -> bool:
        """True when the server may have acted on the request although it did not say so."""
        # Refusals in words and pacing did not act; every other unclear answer (a connection
        # dropped after sending, a read timeout, a 5xx, an unreadable 200) may hide a load.
        return (
            self.kind == "retryable" and not self.unsent and not self.pacing and not self.declined
        )


# --------------------------------------------------------------------------- parsing


def parse_retry_after(value: object, *, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    # A strict pattern, not float(): float() accepts "nan", "inf", "-5" and "1e9".
    if _SECONDS_RE.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    import email.utils  # only for an HTTP-date Retry-After: not imported at start-up

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    try:
        delta = when.timestamp() - now_epoch
    except (OverflowError, OSError, ValueError):
        return None
    # A date in the past means "now", not "malformed".
    return max(0.0, delta) if math.isfinite(delta) else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, item in headers.items():
        if key.lower() == wanted:
            return item
    return None


def _finite(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _parse_body(body: bytes) -> tuple[Any, str | None]:
    """The decoded JSON and None, or None and why the body cannot be read."""
    if not body.strip():
        return None, "empty body"
    text = body.decode("utf-8-sig", errors="replace")
    try:
        # Numbers JSON cannot carry (1e999, NaN, Infinity) are kept as their text: the
        # answer is recorded in the state, which must stay valid JSON.
        return json.loads(text, parse_float=_finite, parse_constant=str), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError:
        if text.lstrip()[:1] in ("{", "["):
            return None, "invalid JSON (the body was cut short?)"
        return None, "not JSON"


def _flatten_message(value: Any, depth: int = 0) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if depth >= _MAX_MESSAGE_DEPTH:  # a hostile answer nested deeper than any real message
        return "…"
    if isinstance(value, Mapping):
        # Field errors: {"url": ["The url field is required."]} -> "url: The url field is required."
        parts = []
        for field, errors in value.items():
            text = _flatten_message(errors, depth + 1)
            parts.append(f"{field}: {text}" if text else str(field))
        return "; ".join(parts)
    if isinstance(value, list | tuple):
        return " ".join(t for t in (_flatten_message(v, depth + 1) for v in value) if t)
    return json.dumps(value)


_MAX_MESSAGE_DEPTH = 8


def _server_message(obj: Mapping[str, Any]) -> str | None:
    # Older endpoints spell it "messege".
    raw = obj.get("message")
    if raw is None or raw == "":
        raw = obj.get("messege")
    return _flatten_message(raw)


def _server_tips(obj: Mapping[str, Any]) -> str | None:
    tips = [_flatten_message(obj.get(name)) for name in ("tip", "tips")]
    joined = "; ".join(t for t in tips if t)
    return joined or None


def normalize(text: str) -> str:
    return _SPACES_RE.sub(" ", text.lower().replace("_", " ").replace("-", " "))


def says(text: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in text for phrase in phrases)


def clip(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snippet(body: bytes, scrub: Callable[[str], str]) -> str:
    text = body[:_SNIPPET_WINDOW].decode("utf-8", errors="replace")
    text = _SPACES_RE.sub(" ", scrub(text)).strip()
    return clip(text, _MAX_SNIPPET)


def http_label(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


class Masker(Protocol):
    """What classification masks secrets with: in text, and in a JSON value."""

    def text(self, text: str) -> str: ...

    def json(self, value: Any) -> Any: ...


class _Shared:
    """The process's registered secrets."""

    def text(self, text: str) -> str:
        return redact(text)

    def json(self, value: Any) -> Any:
        return redact_json(value)


# --------------------------------------------------------------------- classification


@dataclass(frozen=True)
class _Answer:
    """One answer, read: what every rule of the table looks at."""

    status: int
    label: str  # "HTTP 404 Not Found"
    obj: Mapping[str, Any] | None  # the body, when it is a JSON object
    parsed: Any
    problem: str | None  # why the body cannot be read, if it cannot
    words: str  # message and tips, normalized for phrase matching
    described: str  # message and tips, as shown
    status_word: str | None  # the body's "status", lower-cased


def classify(
    status_code: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    masker: Masker | None = None,
) -> Verdict:
    """Classify one HTTP answer of load_model (the whole DESIGN §4 table); pure."""
    # `now` (epoch seconds) only matters for an HTTP-date Retry-After.
    masker = masker if masker is not None else _Shared()
    now = time.time() if now is None else now
    answer = _read(status_code, body)
    retry_after = parse_retry_after(header(headers, "retry-after"), now_epoch=now)
    if retry_after is None and answer.obj is not None:
        retry_after = parse_retry_after(answer.obj.get("retry_after"), now_epoch=now)
    if retry_after is None:
        named = _WAIT_WORDS_RE.search(answer.words)
        retry_after = float(named.group(1)) if named else None
    response = masker.json(answer.obj) if answer.obj is not None else None

    def verdict(kind: Kind, message: str) -> Verdict:
        retryable = kind == "retryable"
        return Verdict(
            kind,
            status_code,
            clip(masker.text(message)),
            retry_after,
            response,
            pacing=retryable and (status_code == 429 or says(answer.words, _PACING_PHRASES)),
            declined=retryable and status_code < 500 and answer.status_word in ("error", "failed"),
        )

    for rule in (_by_status, _by_words, _by_shape):
        found = rule(answer, headers, body, masker)
        if found is not None:
            return verdict(*found)
    # The server's own words when it gave some (http_status says the code), else the code.
    return verdict("failed", answer.described or answer.label)


def _read(status: int, body: bytes) -> _Answer:
    parsed, problem = _parse_body(body)
    obj: Mapping[str, Any] | None = parsed if isinstance(parsed, dict) else None
    message = _server_message(obj) if obj is not None else None
    tips = _server_tips(obj) if obj is not None else None
    described = message or ""
    if tips:
        described = f"{described} (tip: {tips})" if described else tips
    status_field = obj.get("status") if obj is not None else None
    return _Answer(
        status=status,
        label=http_label(status),
        obj=obj,
        parsed=parsed,
        problem=problem,
        words=normalize(" ".join(t for t in (message, tips) if t)),
        described=described,
        status_word=status_field.lower() if isinstance(status_field, str) else None,
    )


_Found = tuple[Kind, str] | None


def _by_status(a: _Answer, headers: Mapping[str, str], _body: bytes, masker: Masker) -> _Found:
    """What the HTTP status alone decides."""
    if 300 <= a.status < 400:
        return "redirect", _redirect_message(a.status, header(headers, "location"), masker.text)
    if a.status in (401, 403):
        reason = "the API key was refused" if a.status == 401 else "not allowed for this key"
        return "auth", a.described or f"{a.label}: {reason}"
    if a.status == 402:
        return "account", a.described or f"{a.label}: the account cannot pay for this"
    if 200 <= a.status < 300 and a.status_word in ("success", "processing"):
        return "submitted", a.described or a.status_word
    return None


def _by_words(a: _Answer, _headers: Mapping[str, str], _body: bytes, _masker: Masker) -> _Found:
    """What the server's words decide (errors arrive in any status, 200 included)."""
    if says(a.words, _AUTH_PHRASES):
        return "auth", a.described
    if says(a.words, _ACCOUNT_PHRASES):
        return "account", a.described
    if says(a.words, EXISTS_PHRASES):
        # Checked before the status and the retry phrases: "already exists", whatever the
        # HTTP status says, is an answer, never retried (a retry would be sent as a reload).
        return "failed", a.described
    if a.status == 429 or a.status >= 500:
        return "retryable", a.described or a.label
    if says(a.words, _RETRY_PHRASES):
        return "retryable", a.described
    return None


def _by_shape(a: _Answer, _headers: Mapping[str, str], body: bytes, masker: Masker) -> _Found:
    """A 2xx that is neither an acknowledgement nor a known error: read its shape."""
    if not 200 <= a.status < 300:
        return None
    if a.obj is None:
        why = a.problem or f"JSON {type(a.parsed).__name__}, not an object"
        if a.problem == "not JSON":
            why = f"not JSON: {_snippet(body, masker.text)!r}"
        return "retryable", f"unreadable answer ({a.label}): {why}"
    if a.status_word in ("error", "failed"):
        return "failed", a.described or f"the server answered status {a.status_word!r}"
    status_field = a.obj.get("status")
    if status_field is None:
        return "retryable", f"unreadable answer ({a.label}): no 'status' field"
    # Not an error we know, not an acknowledgement: ask again rather than guess.
    shown = masker.text(str(status_field))
    return "retryable", f"unexpected answer ({a.label}): status {shown!r}"


def _redirect_message(status: int, location: str | None, scrub: Callable[[str], str]) -> str:
    label = http_label(status)
    if not location:
        return f"{label} without a Location header: check target.endpoint / --endpoint"
    shown = clip(scrub(location), 300)
    if status in (301, 302, 303):
        return (
            f"the endpoint moved ({label}) to {shown}: "
            f"update target.endpoint / --endpoint to {shown}"
        )
    return f"redirect ({label}) to {shown} not followed"
