"""The load_model client: response envelopes, classification and the retry loop (DESIGN §4).

:func:`classify` turns one HTTP answer into a :class:`Verdict`; :class:`LoadModelClient`
POSTs one model with explicit, bounded retries and returns a :class:`SubmitResult`.
Nothing here raises for an API error: the apply runner decides what a result means
for the run (stop on ``auth``/``account``, count ``retryable_failures``...).
"""

from __future__ import annotations

import datetime
import email.utils
import http
import json
import logging
import math
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar

from modelsync import __version__
from modelsync.redact import MASK, redact, register_secret

Kind = Literal["submitted", "retryable", "failed", "auth", "account"]
Outcome = Literal["submitted", "failed", "auth", "account", "stopped", "deadline"]

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
_MAX_JSON_DEPTH = 32

_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")
_SPACES_RE = re.compile(r"\s+")

# Phrases are matched on lower-cased text where `_`/`-` became spaces, so
# "Invalid Api Key", "invalid_api_key" and "INVALID-API-KEY" all match.
_AUTH_PHRASES = ("invalid api key", "api key is invalid", "invalid or missing api key")
_ACCOUNT_PHRASES = (
    "insufficient credit",
    "model credit",
    "not enough credit",
    "out of credit",
)
_RETRY_PHRASES = (
    "rate limit",
    "try again",
    "too many requests",
    "spam filter",
    "same request multiple times",
)
_EXISTS_PHRASES = (
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

    @property
    def may_have_loaded(self) -> bool:
        """True when the server may have acted on the request although it did not say so."""
        # A 429 is refused before the queue; every other unclear answer (a connection
        # dropped after sending, a read timeout, a 5xx, an unreadable 200) may hide a load.
        return self.kind == "retryable" and not self.unsent and self.http_status != 429


@dataclass(frozen=True)
class SubmitResult:
    """What happened to one model after all its attempts."""

    outcome: Outcome
    attempts: int
    http_status: int | None
    message: str
    response: Mapping[str, Any] | None
    duration_s: float
    retryable_failures: int
    resent: bool = False  # the last attempt sent ``resend_body`` (see LoadModelClient.submit)


class AttemptGate(Protocol):
    """The runner's adaptive concurrency limiter, held around each attempt."""

    def acquire(self) -> None: ...

    def release(self, verdict_kind: str, http_status: int | None) -> None: ...


class _NoGate:
    def acquire(self) -> None:
        return None

    def release(self, verdict_kind: str, http_status: int | None) -> None:
        return None


# --------------------------------------------------------------------------- parsing


def parse_retry_after(value: object, *, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
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
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        delta = when.timestamp() - now_epoch
    except (OverflowError, OSError, ValueError):
        return None
    # A date in the past means "now", not "malformed".
    return max(0.0, delta) if math.isfinite(delta) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, item in headers.items():
        if key.lower() == wanted:
            return item
    return None


def _parse_body(body: bytes) -> tuple[Any, str | None]:
    """The decoded JSON and None, or None and why the body cannot be read."""
    if not body.strip():
        return None, "empty body"
    text = body.decode("utf-8-sig", errors="replace")
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError:
        if text.lstrip()[:1] in ("{", "["):
            return None, "invalid JSON (the body was cut short?)"
        return None, "not JSON"


def _flatten_message(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        # Field errors: {"url": ["The url field is required."]} -> "url: The url field is required."
        parts = []
        for field, errors in value.items():
            text = _flatten_message(errors)
            parts.append(f"{field}: {text}" if text else str(field))
        return "; ".join(parts)
    if isinstance(value, list | tuple):
        return " ".join(t for t in (_flatten_message(v) for v in value) if t)
    return json.dumps(value)


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


def _normalize(text: str) -> str:
    return _SPACES_RE.sub(" ", text.lower().replace("_", " ").replace("-", " "))


def _says(text: str, phrases: tuple[str, ...]) -> bool:
    return any(phrase in text for phrase in phrases)


def _clip(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scrub_json(value: Any, scrub: Callable[[str], str], depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth >= _MAX_JSON_DEPTH and isinstance(value, dict | list):
        return "…"
    if isinstance(value, dict):
        return {scrub(str(k)): _scrub_json(v, scrub, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, scrub, depth + 1) for v in value]
    return value


def _snippet(body: bytes, scrub: Callable[[str], str]) -> str:
    text = body[:_SNIPPET_WINDOW].decode("utf-8", errors="replace")
    text = _SPACES_RE.sub(" ", scrub(text)).strip()
    return _clip(text, _MAX_SNIPPET)


def _http_label(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


# --------------------------------------------------------------------- classification


def classify(
    status_code: int, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> Verdict:
    """Classify one HTTP answer of load_model (the whole DESIGN §4 table); pure."""
    # `now` (epoch seconds) only matters for an HTTP-date Retry-After.
    return _classify(
        status_code, body, headers, now=time.time() if now is None else now, scrub=redact
    )


def _classify(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    scrub: Callable[[str], str],
) -> Verdict:
    parsed, problem = _parse_body(body)
    obj: Mapping[str, Any] | None = parsed if isinstance(parsed, dict) else None
    response = _scrub_json(obj, scrub) if obj is not None else None

    retry_after = parse_retry_after(_header(headers, "retry-after"), now_epoch=now)
    if retry_after is None and obj is not None:
        retry_after = parse_retry_after(obj.get("retry_after"), now_epoch=now)

    server_message = _server_message(obj) if obj is not None else None
    tips = _server_tips(obj) if obj is not None else None
    text = _normalize(" ".join(t for t in (server_message, tips) if t))
    described = server_message or ""
    if tips:
        described = f"{described} (tip: {tips})" if described else tips
    label = _http_label(status)

    def verdict(kind: Kind, message: str) -> Verdict:
        return Verdict(kind, status, _clip(scrub(message)), retry_after, response)

    if 300 <= status < 400:
        return verdict("failed", _redirect_message(status, _header(headers, "location"), scrub))
    if status in (401, 403):
        reason = "the API key was refused" if status == 401 else "not allowed for this key"
        return verdict("auth", described or f"{label}: {reason}")
    if status == 402:
        return verdict("account", described or f"{label}: the account cannot pay for this")

    is_2xx = 200 <= status < 300
    status_field = obj.get("status") if obj is not None else None
    status_word = status_field.lower() if isinstance(status_field, str) else None
    if is_2xx and status_word in ("success", "processing"):
        return verdict("submitted", described or status_word)

    if _says(text, _AUTH_PHRASES):
        return verdict("auth", described)
    if _says(text, _ACCOUNT_PHRASES):
        return verdict("account", described)
    if status == 429 or status >= 500:
        return verdict("retryable", described or label)
    if _says(text, _EXISTS_PHRASES):
        # Checked before the retry phrases: "already exists, try again" must not be retried.
        return verdict("failed", described)
    if _says(text, _RETRY_PHRASES):
        return verdict("retryable", described)

    if is_2xx:
        if obj is None:
            why = problem or f"JSON {type(parsed).__name__}, not an object"
            if problem == "not JSON":
                why = f"not JSON: {_snippet(body, scrub)!r}"
            return verdict("retryable", f"unreadable answer ({label}): {why}")
        if status_word in ("error", "failed"):
            return verdict("failed", described or f"the server answered status {status_word!r}")
        if status_field is None:
            return verdict("retryable", f"unreadable answer ({label}): no 'status' field")
        # Not an error we know, not an acknowledgement: ask again rather than guess.
        shown = scrub(str(status_field))
        return verdict("retryable", f"unexpected answer ({label}): status {shown!r}")

    # The server's own words when it gave some (http_status says the code), else the code.
    return verdict("failed", described or label)


def _redirect_message(status: int, location: str | None, scrub: Callable[[str], str]) -> str:
    label = _http_label(status)
    if not location:
        return f"{label} without a Location header: check target.endpoint / --endpoint"
    shown = _clip(scrub(location), 300)
    if status in (301, 302, 303):
        return (
            f"the endpoint moved ({label}) to {shown}: "
            f"update target.endpoint / --endpoint to {shown}"
        )
    return f"redirect ({label}) to {shown} not followed"


# --------------------------------------------------------------------------- client


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # an unparsable port is never the same origin
    if port is None:
        port = {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f}" if float(seconds).is_integer() else f"{seconds:.2f}"


def _attempt_count(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


class LoadModelClient:
    """POSTs models to load_model over one pooled session, with explicit retries."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_retry_after: float = 300.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        gate: AttemptGate | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(connect_timeout, read_timeout, max_retry_after, backoff_base, backoff_cap) < 0:
            raise ValueError("timeouts, max_retry_after and backoff must not be negative")
        self._endpoint = endpoint
        self._api_key = api_key
        register_secret(api_key)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Room for ~16 worker threads on one host. No urllib3 Retry (max_retries=0):
            # retries are the explicit loop in submit(), where they are counted,
            # logged, paced and visible to requests-mock.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _pin_environment(session, endpoint)
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._max_retry_after = max_retry_after
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._gate: AttemptGate = gate if gate is not None else _NoGate()
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        self._headers = {"User-Agent": f"modelsync/{__version__}", "Accept": "application/json"}
        # Per URL: the request as Session.request would prepare it, without its body, and
        # the send settings (proxies, verify...) it would merge in (see _post).
        self._prepared: dict[str, tuple[requests.PreparedRequest, Any]] = {}

    def __enter__(self) -> LoadModelClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def _scrub(self, text: str) -> str:
        # The registry may be cleared or the key too short for it: mask the literal too.
        text = redact(text)
        if self._api_key:
            text = text.replace(self._api_key, MASK)
        return text

    def backoff(self, attempt: int) -> float:
        """Full-jitter wait after the failed attempt with 0-based index ``attempt``."""
        # attempt 0 is the first request, so the wait before the 2nd request is
        # uniform(0, min(cap, base)), before the 3rd uniform(0, min(cap, 2*base)), ...
        bound = min(self._backoff_cap, self._backoff_base * 2.0 ** min(attempt, 64))
        return self._rng.uniform(0.0, bound)

    def submit(
        self,
        body: Mapping[str, str],
        *,
        model_id: str,
        should_stop: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
        on_retry: Callable[[int, Verdict, float], None] | None = None,
        resend_body: Mapping[str, str] | None = None,
    ) -> SubmitResult:
        """POST one model (``body`` without the key), retrying what can be retried.

        ``resend_body`` replaces ``body`` for the attempts after one that may have loaded
        the model unannounced (``Verdict.may_have_loaded``): a create retries as a reload.
        """
        start = self._clock()
        payload = dict(body)
        payload["key"] = self._api_key
        attempts = 0
        retryable_failures = 0
        uncertain = False  # an earlier attempt may have loaded the model
        resent = False
        last: Verdict | None = None
        extra = {"model_id": model_id}

        def finish(outcome: Outcome, message: str) -> SubmitResult:
            return SubmitResult(
                outcome=outcome,
                attempts=attempts,
                http_status=last.http_status if last else None,
                message=_clip(self._scrub(message)),
                response=last.response if last else None,
                duration_s=self._clock() - start,
                retryable_failures=retryable_failures,
                resent=resent,
            )

        def after_last(prefix: str) -> str:
            if last is None:
                return f"{prefix} before the request was sent"
            return f"{prefix} after {_attempt_count(attempts)}; last: {_reason(last)}"

        for attempt in range(self._max_attempts):
            if should_stop():
                return finish("stopped", after_last("stopped"))
            if deadline is not None and self._clock() >= deadline:
                return finish("deadline", after_last("deadline reached"))

            self._gate.acquire()
            # What the gate hears if the attempt raises.
            gate_kind: str = "failed"
            gate_status: int | None = None
            try:
                # acquire() can block for long when the runner lowered its concurrency:
                # a stop or the deadline may have come meanwhile, and nothing may start then.
                # The gate then hears "stopped"/"deadline": no request was sent.
                if should_stop():
                    gate_kind = "stopped"
                    return finish("stopped", after_last("stopped"))
                if deadline is not None and self._clock() >= deadline:
                    gate_kind = "deadline"
                    return finish("deadline", after_last("deadline reached"))
                verdict = self._attempt(payload)
                gate_kind, gate_status = verdict.kind, verdict.http_status
            finally:
                self._gate.release(gate_kind, gate_status)

            attempts += 1
            last = verdict
            self._logger.debug(
                "%s: attempt %d: %s: %s",
                model_id,
                attempts,
                verdict.kind,
                _reason(verdict),
                extra=extra,
            )
            if verdict.kind == "submitted":
                return finish("submitted", verdict.message)
            if verdict.kind in ("auth", "account"):
                return finish("account" if verdict.kind == "account" else "auth", verdict.message)
            if verdict.kind == "failed":
                if _says(_normalize(verdict.message), _EXISTS_PHRASES):
                    hint = _exists_hint(model_id, payload.get("force_load"), uncertain)
                    return finish("failed", hint)
                return finish("failed", verdict.message)

            # Retryable. 429 is pacing (the gate slows down), not a sign the API is down.
            if verdict.http_status != 429:
                retryable_failures += 1
            uncertain = uncertain or verdict.may_have_loaded
            switch_to = resend_body if uncertain and not resent else None
            if attempt + 1 >= self._max_attempts:
                break
            if verdict.retry_after is not None:
                if verdict.retry_after > self._max_retry_after:
                    # Waiting that long would hold a worker for nothing: fail now,
                    # the next run retries the entry.
                    return finish(
                        "failed",
                        f"the server asked to wait {_fmt_seconds(verdict.retry_after)} s "
                        f"before retrying, more than --max-retry-after "
                        f"{_fmt_seconds(self._max_retry_after)} s: not retried in this run "
                        f"(last: {_reason(verdict)})",
                    )
                wait = verdict.retry_after
            else:
                wait = self.backoff(attempt)
            if deadline is not None and self._clock() + wait > deadline:
                return finish(
                    "deadline",
                    f"deadline reached: the next attempt would start after it "
                    f"(wait {_fmt_seconds(wait)} s) after {_attempt_count(attempts)}; "
                    f"last: {_reason(verdict)}",
                )
            note = ""
            if switch_to is not None:
                payload = {**switch_to, "key": self._api_key}
                resent = True
                note = (
                    f", with force_load: {switch_to.get('force_load')} since the failed "
                    "attempt may have loaded the model"
                )
            self._logger.info(
                "%s: attempt %d of %d failed (%s); retrying in %s s%s",
                model_id,
                attempts,
                self._max_attempts,
                _reason(verdict),
                _fmt_seconds(wait),
                note,
                extra=extra,
            )
            if on_retry is not None:
                on_retry(attempts, verdict, wait)
            self._sleep(wait)

        assert last is not None  # the loop ran at least once and only breaks after an attempt
        return finish("failed", f"gave up after {_attempt_count(attempts)}: {last.message}")

    def _attempt(self, payload: Mapping[str, str]) -> Verdict:
        """One attempt: POST, follow same-origin 307/308 (at most MAX_REDIRECTS), classify."""
        url = self._endpoint
        hops = 0
        while True:
            try:
                status, content, headers = self._post(url, payload)
            except requests.RequestException as exc:
                return self._transport_verdict(exc)
            location = _header(headers, "location")
            if location is not None and 300 <= status < 400:
                target = urllib.parse.urljoin(url, location)
                if status in (307, 308) and _origin(target) == _origin(url):
                    if hops < MAX_REDIRECTS:
                        # 307/308 keep method and body: the same POST goes to the new path.
                        hops += 1
                        url = target
                        continue
                    return Verdict(
                        "failed",
                        status,
                        self._scrub(
                            f"more than {MAX_REDIRECTS} redirects from {self._endpoint}: "
                            "check target.endpoint / --endpoint"
                        ),
                        None,
                        None,
                    )
                if status in (307, 308):
                    # The key is in the body: it never goes to a host we were not told about.
                    shown = _clip(self._scrub(target), 300)
                    return Verdict(
                        "failed",
                        status,
                        f"the endpoint redirected ({_http_label(status)}) to another host, "
                        f"{shown}: not followed, the request and the API key were not sent "
                        "there; if the API moved, update target.endpoint / --endpoint",
                        None,
                        None,
                    )
                # Classify with the absolute location, so the message names a usable URL.
                headers = {k: v for k, v in headers.items() if k.lower() != "location"}
                headers["Location"] = target
            return _classify(status, content, headers, now=self._wall_clock(), scrub=self._scrub)

    def _post(self, url: str, payload: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        # What Session.post does, with the parts that are the same for every request to
        # this URL (merging headers, parsing the URL, reading settings) done once: they
        # were a third of the CPU time of a POST (DESIGN §7).
        session = self._session
        cached = self._prepared.get(url)
        if cached is None:
            template = session.prepare_request(
                requests.Request("POST", url, headers=self._headers, cookies=RequestsCookieJar())
            )
            # stream: so that the body can be read with a size limit.
            settings = session.merge_environment_settings(template.url, {}, True, None, None)
            cached = self._prepared[url] = (template, settings)
        template, settings = cached
        if session.trust_env:  # a session given by the caller may read the environment
            settings = session.merge_environment_settings(template.url, {}, True, None, None)
        request = template.copy()
        request.prepare_body(None, None, payload)
        # The session's cookies as they are now, copied as Session.request merges them.
        cookies = RequestsCookieJar()
        cookies.update(session.cookies)
        request.prepare_cookies(cookies)
        response = session.send(request, timeout=self._timeout, allow_redirects=False, **settings)
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(chunk_size=65536):
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_BODY_BYTES:
                    break
            return response.status_code, b"".join(chunks)[:MAX_BODY_BYTES], response.headers
        finally:
            response.close()

    def _transport_verdict(self, exc: requests.RequestException) -> Verdict:
        kind: Kind = "retryable"
        # Refused or timed out while connecting: the request never left this machine.
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        unsent = isinstance(reason, urllib3.exceptions.NewConnectionError)
        if isinstance(
            exc,
            requests.exceptions.InvalidURL
            | requests.exceptions.MissingSchema
            | requests.exceptions.InvalidSchema
            | requests.exceptions.InvalidHeader
            | requests.exceptions.URLRequired,
        ):
            # A bad endpoint will not heal by waiting.
            kind, label = "failed", "cannot send the request (check target.endpoint / --endpoint)"
        elif isinstance(exc, requests.exceptions.ConnectTimeout):
            label = f"connect timeout: no connection within {_fmt_seconds(self._timeout[0])} s"
            unsent = True
        elif isinstance(exc, requests.exceptions.ReadTimeout):
            label = f"read timeout: no answer within {_fmt_seconds(self._timeout[1])} s"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            label = "connection broken while reading the answer"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            label = "connection error"
        else:
            label = "request error"
        # Exception texts carry URLs (and whatever a proxy put there): redact them.
        detail = _clip(self._scrub(str(exc)), 300)
        message = f"{label} ({type(exc).__name__}): {detail}" if detail else label
        return Verdict(kind, None, message, None, None, unsent=unsent)


def _pin_environment(session: requests.Session, endpoint: str) -> None:
    """Read the environment's proxies, CA bundle and .netrc for ``endpoint`` once.

    requests reads them again at every request (about a third of its own work per POST
    here); the client only ever posts to ``endpoint`` and to same-origin redirects of it,
    for which the answers are the same.
    """
    settings = session.merge_environment_settings(endpoint, {}, None, None, None)
    auth = requests.utils.get_netrc_auth(endpoint)
    session.trust_env = False
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    if auth is not None:
        session.auth = auth


def _reason(verdict: Verdict) -> str:
    if verdict.http_status is None or f"HTTP {verdict.http_status}" in verdict.message:
        return verdict.message
    return f"HTTP {verdict.http_status}: {verdict.message}"


def _exists_hint(model_id: str, force_load: str | None, uncertain: bool = False) -> str:
    if force_load == "yes":
        return (
            f"model id '{model_id}' already exists on the account and was not reloaded "
            f"even with force_load: yes: run 'modelsync state adopt {model_id}' to record it"
        )
    maybe_ours = (
        " (an earlier attempt of this run may have loaded it before its answer was lost)"
        if uncertain
        else ""
    )
    return (
        f"model id '{model_id}' already exists on the account{maybe_ours}: run 'modelsync "
        f"state adopt {model_id}' to record it, or set force_load: yes to reload it"
    )
