"""The one HTTP client: a pooled session, timeouts, redirects; retries by :mod:`.retry`.

:class:`Transport` knows nothing of load_model: it POSTs a JSON payload to a URL,
classifies each answer with the function it is given, holds the runner's gate around
every attempt, bounds each attempt's total time and can abandon what is in flight
(:mod:`.inflight`). :class:`~.retry.RetryLoop` retries what the verdict says can be
retried; retries are that loop, not urllib3's ``Retry``: they are counted, logged,
paced, and visible to requests-mock in tests (STYLE §7).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
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
from modelsync.api.inflight import InFlight, Watchdog, tracking_pools
from modelsync.api.retry import CallResult, Classify, RetryLoop, RetryPolicy, fmt_seconds
from modelsync.redact import Redactor, redact, redact_json


class AttemptGate(Protocol):
    """The runner's concurrency limiter, held around each attempt."""

    def acquire(self) -> None: ...

    def release(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None: ...


class _NoGate:
    def acquire(self) -> None:
        return None

    def release(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None:
        return None


class _KeyMasker:
    """The process's secrets and this transport's own key (masked even if short)."""

    def __init__(self, key: str) -> None:
        self._own = Redactor((key,)) if key else Redactor()

    def text(self, text: str) -> str:
        return self._own.text(redact(text))

    def json(self, value: Any) -> Any:
        return self._own.json(redact_json(value))


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
        self.inflight = InFlight()
        self._watchdog = Watchdog(lambda ident: self.inflight.abort(ident, "limit"))
        # The total time one attempt may take: connecting, then the whole answer.
        self.attempt_limit = connect_timeout + read_timeout
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Room for ~16 worker threads on one host. No urllib3 Retry (max_retries=0):
            # retries are the explicit loop in call().
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            # Connections that say when a request starts, so that it can be aborted.
            adapter.poolmanager.pool_classes_by_scheme = tracking_pools(self.inflight)
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

    def jitter(self, share: float) -> float:
        """A random share in [0, ``share``]."""
        return self._rng.uniform(0.0, share)

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
        loop = RetryLoop(self, url, payload, classify, label, should_stop, deadline, resend_payload)
        return loop.run(on_retry)

    # ------------------------------------------------------------------ one attempt

    def abort_all(self, why: str) -> None:
        """Abandon every request in flight now, and start no attempt after this."""
        self.inflight.abort_all(why)

    def attempt(self, url: str, payload: Mapping[str, Any], classify: Classify) -> Verdict:
        """One attempt within its total time limit (see :mod:`.inflight`)."""
        entry = self._watchdog.arm(self.attempt_limit, threading.get_ident())
        aborted = None
        try:
            verdict = self._attempt(url, payload, classify)
        finally:
            self._watchdog.disarm(entry)
            aborted = self.inflight.done()
        # Only an attempt that was cut before its answer was read counts as aborted: an answer
        # read whole (a conflict, a refused key...) stands, even if the abort came meanwhile.
        if aborted is not None and verdict.http_status is None:
            verdict = self._aborted_verdict(url, aborted, verdict)
        return verdict

    def _unreadable(self, status: int, redirected: bool, exc: Exception) -> Verdict:
        label = http_label(status)
        self.log(defaults.LOG_VERBOSE, "%s: %s", label, self.scrub(str(exc)))
        if redirected and 300 <= status < 400:
            message = f"{label} to a Location that is not a URL: check target.endpoint / --endpoint"
            return Verdict("redirect", status, message, None, None)
        message = f"unreadable answer ({label}): {type(exc).__name__}"
        return Verdict("retryable", status, message, None, None)

    def _aborted_verdict(self, url: str, why: str, verdict: Verdict) -> Verdict:
        host = _host(url)
        if why == "limit":
            message = (
                f"no complete answer within {fmt_seconds(self.attempt_limit)} s ({host}); "
                "it may have reached the server"
            )
        else:
            message = f"abandoned in flight ({why}); it may have reached the server ({host})"
        self.log(defaults.LOG_VERBOSE, "%s: %s", message, verdict.message)
        return Verdict("retryable", None, message, None, None, aborted=why)

    def _attempt(self, url: str, payload: Mapping[str, Any], classify: Classify) -> Verdict:
        """POST, follow same-origin 307/308 (at most MAX_REDIRECTS), classify."""
        start_url = url
        hops = 0
        while True:
            try:
                status, content, headers = self._post(url, payload)
            except requests.RequestException as exc:
                return self._transport_verdict(exc, url)
            except ValueError as exc:
                # requests parses a redirect's Location even when it does not follow it: one
                # that is not a URL raises here.
                self.log(defaults.LOG_VERBOSE, "redirect: %s", self.scrub(str(exc)))
                message = "a redirect to a Location that is not a URL: check --endpoint"
                return Verdict("redirect", None, message, None, None)
            try:
                location = header(headers, "location")
                if location is None or not 300 <= status < 400:
                    return classify(status, content, headers)
                target = urllib.parse.urljoin(url, location)
            except (ValueError, OverflowError, RecursionError) as exc:
                # A hostile or broken answer must not end the run with a traceback.
                return self._unreadable(status, location is not None, exc)
            if status in (307, 308) and _origin(target) == _origin(url):
                if hops >= MAX_REDIRECTS:
                    message = (
                        f"more than {MAX_REDIRECTS} redirects from {start_url}: "
                        "check target.endpoint / --endpoint"
                    )
                    return Verdict("redirect", status, self.scrub(message), None, None)
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
                return Verdict("redirect", status, message, None, None)
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
        if session.cookies:
            # The session's cookies as they are now, copied as Session.request merges them
            # (an API that sets none, the usual case, costs no cookie handling here).
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

    def _transport_verdict(self, exc: requests.RequestException, url: str) -> Verdict:
        """A transport error in one short line (kind and host); the rest at ``-v``."""
        label, kind, unsent = _transport_label(exc, self._timeout)
        # Exception texts carry URLs (and whatever a proxy put there): redact them.
        self.log(defaults.LOG_VERBOSE, "%s: %s", label, self.scrub(str(exc)))
        return Verdict(kind, None, f"{label} ({_host(url)})", None, None, unsent=unsent)

    # ------------------------------------------------------------------ used by RetryLoop

    def gated_attempt(
        self,
        url: str,
        payload: Mapping[str, Any],
        classify: Classify,
        should_stop: Callable[[], bool],
        deadline: float | None,
        *,
        started: Callable[[], None] = lambda: None,
    ) -> Verdict | Literal["stopped", "deadline"]:
        """One attempt inside the gate; "stopped"/"deadline" when it may no longer start."""
        self._gate.acquire()
        # What the gate hears if the attempt raises.
        gate_kind: str = "failed"
        gate_status: int | None = None
        pacing = False
        try:
            # acquire() can block for long when the runner lowered its concurrency:
            # a stop or the deadline may have come meanwhile, and nothing may start then.
            # The gate then hears "stopped"/"deadline": no request was sent.
            if should_stop() or self.inflight.abandoned.is_set():
                gate_kind = "stopped"
                return "stopped"
            if deadline is not None and self.clock() >= deadline:
                gate_kind = "deadline"
                return "deadline"
            started()
            verdict = self.attempt(url, payload, classify)
            gate_kind, gate_status, pacing = verdict.kind, verdict.http_status, verdict.pacing
            return verdict
        finally:
            if pacing:
                self._gate.release(gate_kind, gate_status, pacing=True)
            else:
                self._gate.release(gate_kind, gate_status)

    def log(self, level: int, message: str, *args: Any, label: str | None = None) -> None:
        """A log line, about the call named ``label`` (a model id) when given."""
        extra = {"model_id": label} if label is not None else None
        self._logger.log(level, message, *args, extra=extra)

    def sleep(self, seconds: float) -> None:
        """Wait before the next attempt (the sleep given at construction)."""
        self._sleep(seconds)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or "?"


def _transport_label(
    exc: requests.RequestException, timeout: tuple[float, float]
) -> tuple[str, Literal["retryable", "failed"], bool]:
    """What went wrong, whether it can heal by waiting, and whether the request never left."""
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.InvalidHeader
        | requests.exceptions.URLRequired,
    ):
        # A bad endpoint will not heal by waiting.
        return "cannot send the request (check target.endpoint / --endpoint)", "failed", True
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return (
            f"connect timeout: no connection within {fmt_seconds(timeout[0])} s",
            "retryable",
            True,
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"read timeout: no answer within {fmt_seconds(timeout[1])} s", "retryable", False
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken while reading the answer", "retryable", False
    # Refused or unresolvable: the request never left this machine.
    cause = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        text = str(cause).lower()
        if "resolution" in text or "name or service" in text or "nodename" in text:
            return "name resolution failed", "retryable", True
        if "refused" in text:
            return "connection refused", "retryable", True
        return "cannot connect", "retryable", True
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection error", "retryable", False
    return "request error", "retryable", False


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
