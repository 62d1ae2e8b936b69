"""The one HTTP client: a pooled session, timeouts, redirects, and the explicit retry loop.

:class:`Transport` knows nothing of load_model: it POSTs a JSON payload to a URL,
classifies each answer with the function it is given, and retries what the verdict
says can be retried (full-jitter backoff, Retry-After, a deadline, a stop flag, the
runner's gate around every attempt). Retries are this loop, not urllib3's ``Retry``:
they are counted, logged, paced, and visible to requests-mock in tests (STYLE §7).
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar

from modelsync import __version__, defaults
from modelsync.api.envelope import (
    MAX_BODY_BYTES,
    MAX_REDIRECTS,
    Verdict,
    clip,
    header,
    http_label,
)
from modelsync.redact import Redactor, redact, redact_json

Outcome = Literal["submitted", "failed", "auth", "account", "stopped", "deadline"]
Classify = Callable[[int, bytes, Mapping[str, str]], Verdict]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, how long to wait between them, and how long to trust the server."""

    max_attempts: int = defaults.MAX_ATTEMPTS
    max_retry_after: float = defaults.MAX_RETRY_AFTER_S
    backoff_base: float = defaults.BACKOFF_BASE_S
    backoff_cap: float = defaults.BACKOFF_CAP_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.max_retry_after, self.backoff_base, self.backoff_cap) < 0:
            raise ValueError("max_retry_after and backoff must not be negative")


@dataclass(frozen=True)
class CallResult:
    """What happened to one call after all its attempts."""

    outcome: Outcome
    attempts: int
    http_status: int | None
    message: str
    response: Mapping[str, Any] | None
    duration_s: float
    retryable_failures: int
    resent: bool = False  # the last attempt sent the resend payload
    uncertain: bool = False  # an attempt may have been acted on although it did not say so
    answered: str | None = None  # the kind of the last answer, when it settled the call


class AttemptGate(Protocol):
    """The runner's concurrency limiter, held around each attempt."""

    def acquire(self) -> None: ...

    def release(self, verdict_kind: str, http_status: int | None) -> None: ...


class _NoGate:
    def acquire(self) -> None:
        return None

    def release(self, verdict_kind: str, http_status: int | None) -> None:
        return None


class _KeyMasker:
    """The process's secrets and this transport's own key (masked even if short)."""

    def __init__(self, key: str) -> None:
        self._own = Redactor((key,)) if key else Redactor()

    def text(self, text: str) -> str:
        return self._own.text(redact(text))

    def json(self, value: Any) -> Any:
        return self._own.json(redact_json(value))


def fmt_seconds(seconds: float) -> str:
    """``2`` or ``2.50``: seconds as people read them."""
    return f"{seconds:.0f}" if float(seconds).is_integer() else f"{seconds:.2f}"


def attempt_count(n: int) -> str:
    """``1 attempt``, ``2 attempts``."""
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def reason(verdict: Verdict) -> str:
    """A verdict's message with its HTTP status, once."""
    if verdict.http_status is None or f"HTTP {verdict.http_status}" in verdict.message:
        return verdict.message
    return f"HTTP {verdict.http_status}: {verdict.message}"


class Transport:
    """POSTs JSON over one pooled session, with explicit, bounded retries."""

    def __init__(
        self,
        *,
        secret: str = "",
        session: requests.Session | None = None,
        pin_to: str | None = None,
        connect_timeout: float = defaults.CONNECT_TIMEOUT_S,
        read_timeout: float = defaults.READ_TIMEOUT_S,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        gate: AttemptGate | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if min(connect_timeout, read_timeout) < 0:
            raise ValueError("timeouts must not be negative")
        self.masker = _KeyMasker(secret)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Room for ~16 worker threads on one host. No urllib3 Retry (max_retries=0):
            # retries are the explicit loop in call().
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            if pin_to is not None:
                _pin_environment(session, pin_to)
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self.clock = clock
        self.wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._gate: AttemptGate = gate if gate is not None else _NoGate()
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        self._headers = {"User-Agent": f"modelsync/{__version__}", "Accept": "application/json"}
        # Per URL: the request as Session.request would prepare it, without its body, and
        # the send settings (proxies, verify...) it would merge in (see _post).
        self._prepared: dict[str, tuple[requests.PreparedRequest, Any]] = {}

    def close(self) -> None:
        """Close the HTTP session if this transport created it."""
        if self._owns_session:
            self._session.close()

    def scrub(self, text: str) -> str:
        """Mask every secret (the key included) in ``text``."""
        return self.masker.text(text)

    def backoff(self, attempt: int) -> float:
        """Full-jitter wait after the failed attempt with 0-based index ``attempt``."""
        # attempt 0 is the first request, so the wait before the 2nd request is
        # uniform(0, min(cap, base)), before the 3rd uniform(0, min(cap, 2*base)), ...
        p = self.policy
        bound = min(p.backoff_cap, p.backoff_base * 2.0 ** min(attempt, 64))
        return self._rng.uniform(0.0, bound)

    # ------------------------------------------------------------------ the retry loop

    def call(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        classify: Classify,
        label: str,
        should_stop: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
        on_retry: Callable[[int, Verdict, float], None] | None = None,
        resend_payload: Mapping[str, Any] | None = None,
    ) -> CallResult:
        """POST ``payload`` to ``url`` until an answer settles it or attempts run out.

        ``resend_payload`` replaces ``payload`` for the attempts after one that may have
        been acted on unannounced (``Verdict.may_have_loaded``).
        """
        loop = _Loop(self, url, payload, classify, label, should_stop, deadline, resend_payload)
        return loop.run(on_retry)

    # ------------------------------------------------------------------ one attempt

    def attempt(self, url: str, payload: Mapping[str, Any], classify: Classify) -> Verdict:
        """One attempt: POST, follow same-origin 307/308 (at most MAX_REDIRECTS), classify."""
        start_url = url
        hops = 0
        while True:
            try:
                status, content, headers = self._post(url, payload)
            except requests.RequestException as exc:
                return self._transport_verdict(exc)
            location = header(headers, "location")
            if location is None or not 300 <= status < 400:
                return classify(status, content, headers)
            target = urllib.parse.urljoin(url, location)
            if status in (307, 308) and _origin(target) == _origin(url):
                if hops >= MAX_REDIRECTS:
                    message = (
                        f"more than {MAX_REDIRECTS} redirects from {start_url}: "
                        "check target.endpoint / --endpoint"
                    )
                    return Verdict("failed", status, self.scrub(message), None, None)
                # 307/308 keep method and body: the same POST goes to the new path.
                hops += 1
                url = target
                continue
            if status in (307, 308):
                # The key is in the body: it never goes to a host we were not told about.
                shown = clip(self.scrub(target), 300)
                message = (
                    f"the endpoint redirected ({http_label(status)}) to another host, "
                    f"{shown}: not followed, the request and the API key were not sent "
                    "there; if the API moved, update target.endpoint / --endpoint"
                )
                return Verdict("failed", status, message, None, None)
            # Classify with the absolute location, so the message names a usable URL.
            absolute = {k: v for k, v in headers.items() if k.lower() != "location"}
            absolute["Location"] = target
            return classify(status, content, absolute)

    def _post(self, url: str, payload: Mapping[str, Any]) -> tuple[int, bytes, Mapping[str, str]]:
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
        kind: Literal["retryable", "failed"] = "retryable"
        # Refused or timed out while connecting: the request never left this machine.
        cause = getattr(exc.args[0], "reason", None) if exc.args else None
        unsent = isinstance(cause, urllib3.exceptions.NewConnectionError)
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
            label = f"connect timeout: no connection within {fmt_seconds(self._timeout[0])} s"
            unsent = True
        elif isinstance(exc, requests.exceptions.ReadTimeout):
            label = f"read timeout: no answer within {fmt_seconds(self._timeout[1])} s"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            label = "connection broken while reading the answer"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            label = "connection error"
        else:
            label = "request error"
        # Exception texts carry URLs (and whatever a proxy put there): redact them.
        detail = clip(self.scrub(str(exc)), 300)
        message = f"{label} ({type(exc).__name__}): {detail}" if detail else label
        return Verdict(kind, None, message, None, None, unsent=unsent)

    # ------------------------------------------------------------------ used by _Loop

    def gated_attempt(
        self,
        url: str,
        payload: Mapping[str, Any],
        classify: Classify,
        should_stop: Callable[[], bool],
        deadline: float | None,
    ) -> Verdict | Literal["stopped", "deadline"]:
        """One attempt inside the gate; "stopped"/"deadline" when it may no longer start."""
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
                return "stopped"
            if deadline is not None and self.clock() >= deadline:
                gate_kind = "deadline"
                return "deadline"
            verdict = self.attempt(url, payload, classify)
            gate_kind, gate_status = verdict.kind, verdict.http_status
            return verdict
        finally:
            self._gate.release(gate_kind, gate_status)

    def log(self, level: int, message: str, *args: Any, label: str) -> None:
        """A log line about the call named ``label`` (a model id)."""
        self._logger.log(level, message, *args, extra={"model_id": label})

    def sleep(self, seconds: float) -> None:
        """Wait before the next attempt (the sleep given at construction)."""
        self._sleep(seconds)


class _Loop:
    """The attempts of one call: the state the retry loop carries between them."""

    def __init__(
        self,
        transport: Transport,
        url: str,
        payload: Mapping[str, Any],
        classify: Classify,
        label: str,
        should_stop: Callable[[], bool],
        deadline: float | None,
        resend_payload: Mapping[str, Any] | None,
    ) -> None:
        self.t = transport
        self.url = url
        self.payload = payload
        self.classify = classify
        self.label = label
        self.should_stop = should_stop
        self.deadline = deadline
        self.resend_payload = resend_payload
        self.start = transport.clock()
        self.attempts = 0
        self.retryable_failures = 0
        self.uncertain = False
        self.resent = False
        self.last: Verdict | None = None

    def finish(self, outcome: Outcome, message: str, answered: str | None = None) -> CallResult:
        last = self.last
        return CallResult(
            outcome=outcome,
            attempts=self.attempts,
            http_status=last.http_status if last else None,
            message=clip(self.t.scrub(message)),
            response=last.response if last else None,
            duration_s=self.t.clock() - self.start,
            retryable_failures=self.retryable_failures,
            resent=self.resent,
            uncertain=self.uncertain,
            answered=answered,
        )

    def after_last(self, prefix: str) -> str:
        if self.last is None:
            return f"{prefix} before the request was sent"
        return f"{prefix} after {attempt_count(self.attempts)}; last: {reason(self.last)}"

    def run(self, on_retry: Callable[[int, Verdict, float], None] | None) -> CallResult:
        policy = self.t.policy
        for attempt in range(policy.max_attempts):
            if self.should_stop():
                return self.finish("stopped", self.after_last("stopped"))
            if self.deadline is not None and self.t.clock() >= self.deadline:
                return self.finish("deadline", self.after_last("deadline reached"))
            got = self.t.gated_attempt(
                self.url, self.payload, self.classify, self.should_stop, self.deadline
            )
            if got == "stopped":
                return self.finish("stopped", self.after_last("stopped"))
            if got == "deadline":
                return self.finish("deadline", self.after_last("deadline reached"))
            self.attempts += 1
            self.last = got
            self.t.log(
                logging.DEBUG,
                "%s: attempt %d: %s: %s",
                self.label,
                self.attempts,
                got.kind,
                reason(got),
                label=self.label,
            )
            if got.kind != "retryable":
                return self.finish(got.kind, got.message, answered=got.kind)
            # Retryable. 429 is pacing (the gate slows down), not a sign the API is down.
            if got.http_status != 429:
                self.retryable_failures += 1
            self.uncertain = self.uncertain or got.may_have_loaded
            if attempt + 1 >= policy.max_attempts:
                break
            ended = self.wait_before_retry(attempt, got, on_retry)
            if ended is not None:
                return ended
        assert self.last is not None  # the loop ran at least once and only breaks after one
        last = self.last
        return self.finish(
            "failed", f"gave up after {attempt_count(self.attempts)}: {last.message}"
        )

    def wait_before_retry(
        self,
        attempt: int,
        verdict: Verdict,
        on_retry: Callable[[int, Verdict, float], None] | None,
    ) -> CallResult | None:
        """Sleep before the next attempt; a CallResult when the call ends here instead."""
        policy = self.t.policy
        if verdict.retry_after is not None:
            if verdict.retry_after > policy.max_retry_after:
                # Waiting that long would hold a worker for nothing: fail now,
                # the next run retries the entry.
                return self.finish(
                    "failed",
                    f"the server asked to wait {fmt_seconds(verdict.retry_after)} s "
                    f"before retrying, more than --max-retry-after "
                    f"{fmt_seconds(policy.max_retry_after)} s: not retried in this run "
                    f"(last: {reason(verdict)})",
                )
            wait = verdict.retry_after
        else:
            wait = self.t.backoff(attempt)
        if self.deadline is not None and self.t.clock() + wait > self.deadline:
            return self.finish(
                "deadline",
                f"deadline reached: the next attempt would start after it "
                f"(wait {fmt_seconds(wait)} s) after {attempt_count(self.attempts)}; "
                f"last: {reason(verdict)}",
            )
        note = ""
        switch_to = self.resend_payload if self.uncertain and not self.resent else None
        if switch_to is not None:
            self.payload = switch_to
            self.resent = True
            note = (
                f", with force_load: {switch_to.get('force_load')} since the failed "
                "attempt may have loaded the model"
            )
        self.t.log(
            logging.INFO,
            "%s: attempt %d of %d failed (%s); retrying in %s s%s",
            self.label,
            self.attempts,
            policy.max_attempts,
            reason(verdict),
            fmt_seconds(wait),
            note,
            label=self.label,
        )
        if on_retry is not None:
            on_retry(self.attempts, verdict, wait)
        self.t.sleep(wait)
        return None


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


def _pin_environment(session: requests.Session, url: str) -> None:
    """Read the environment's proxies, CA bundle and .netrc for ``url`` once.

    requests reads them again at every request (about a third of its own work per POST
    here); the transport only ever posts to one host and same-origin redirects of it,
    for which the answers are the same.
    """
    settings = session.merge_environment_settings(url, {}, None, None, None)
    auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    if auth is not None:
        session.auth = auth
