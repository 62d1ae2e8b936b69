"""The explicit retry loop of every call (DESIGN §4, STYLE §7), and how it is tuned.

No ``requests`` here: settings and the CLI read :class:`RetryPolicy` without paying for
the HTTP stack at start-up. :class:`RetryLoop` drives a transport's attempts: full-jitter
backoff, Retry-After, a deadline, a stop flag, and the resend payload after an attempt
that may have been acted on unannounced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modelsync import defaults
from modelsync.api.envelope import Verdict, clip
from modelsync.defaults import MAX_RATE_LIMITED
from modelsync.records import Cause

if TYPE_CHECKING:
    from modelsync.api.transport import Transport

Outcome = Literal[
    "submitted", "failed", "auth", "account", "redirect", "stopped", "deadline", "abandoned"
]
# Waits the server names get up to this share added, so refused workers do not return together.
SERVER_WAIT_JITTER = 0.2
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
    cause: Cause | None = None  # why it failed (DESIGN §4); None when submitted


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


class RetryLoop:
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
        self.start: float | None = None  # when the first attempt got its slot
        self.attempts = 0
        self.counted = 0  # attempts that count against max_attempts (not 429s)
        self.rate_limited = 0
        self.all_unsent = True
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
            duration_s=self.t.clock() - self.start if self.start is not None else 0.0,
            retryable_failures=self.retryable_failures,
            resent=self.resent,
            uncertain=self.uncertain,
            answered=answered,
            cause=self.cause(outcome, answered),
        )

    def cause(self, outcome: Outcome, answered: str | None) -> Cause | None:
        """Why the call failed, as the next run needs to know it (DESIGN §4)."""
        if outcome == "submitted":
            return None
        if self.uncertain:
            # An earlier attempt may have been acted on, whatever the last answer said.
            return "maybe_reached"
        if answered is not None:
            # The server answered and said no; or this side could not even send it.
            return "never_sent" if self.last is not None and self.last.unsent else "rejected"
        if self.all_unsent:
            return "never_sent"
        return "rejected"  # only refusals before the queue (429s)

    def started(self) -> None:
        if self.start is None:
            self.start = self.t.clock()

    def after_last(self, prefix: str) -> str:
        if self.last is None:
            return f"{prefix} before the request was sent"
        return f"{prefix} after {attempt_count(self.attempts)}; last: {reason(self.last)}"

    def run(self, on_retry: Callable[[int, Verdict, float], None] | None) -> CallResult:
        policy = self.t.policy
        while True:
            if self.should_stop():
                return self.finish("stopped", self.after_last("stopped"))
            if self.deadline is not None and self.t.clock() >= self.deadline:
                return self.finish("deadline", self.after_last("deadline reached"))
            got = self.t.gated_attempt(
                self.url,
                self.payload,
                self.classify,
                self.should_stop,
                self.deadline,
                started=self.started,
            )
            if got == "stopped":
                return self.finish("stopped", self.after_last("stopped"))
            if got == "deadline":
                return self.finish("deadline", self.after_last("deadline reached"))
            ended = self.settle(got)
            if ended is not None:
                return ended
            paced_out = self.deadline is None and self.rate_limited >= MAX_RATE_LIMITED
            if self.counted >= policy.max_attempts or paced_out:
                return self.finish(
                    "failed", f"gave up after {attempt_count(self.attempts)}: {got.message}"
                )
            ended = self.wait_before_retry(self.counted, got, on_retry)
            if ended is not None:
                return ended

    def settle(self, got: Verdict) -> CallResult | None:
        """Take one attempt's verdict into account; a CallResult when it ends the call."""
        self.attempts += 1
        self.last = got
        self.all_unsent = self.all_unsent and got.unsent
        self.t.log(
            logging.DEBUG,
            "%s: attempt %d: %s: %s",
            self.label,
            self.attempts,
            got.kind,
            reason(got),
            label=self.label,
        )
        if got.aborted is not None and got.aborted != "limit":
            self.uncertain = True
            return self.finish("abandoned", got.message)
        if got.kind != "retryable":
            return self.finish(got.kind, got.message, answered=got.kind)
        # Pacing (a 429, a rate limit in words: the gate slows down) uses no attempt.
        if got.pacing:
            self.rate_limited += 1
        else:
            self.counted += 1
            self.retryable_failures += 1
        self.uncertain = self.uncertain or got.may_have_loaded
        return None

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
            # A wait the server names gets 0-20% added, so workers it refused together
            # do not all come back at the same moment.
            wait = verdict.retry_after * (1.0 + self.t.jitter(SERVER_WAIT_JITTER))
        else:
            wait = self.t.backoff(max(0, attempt - 1))
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
        if verdict.pacing:
            what = "rate limited"
        else:
            what = f"attempt {self.counted} of {policy.max_attempts} failed"
        self.t.log(
            logging.INFO,
            "%s: %s (%s); retrying in %s s%s",
            self.label,
            what,
            reason(verdict),
            fmt_seconds(wait),
            note,
            label=self.label,
        )
        if on_retry is not None:
            on_retry(self.attempts, verdict, wait)
        self.t.sleep(wait)
        return None
