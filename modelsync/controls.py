"""What paces and stops a run: the stop flag, the adaptive gate, the health watch, backoffs.

:func:`build_controls` is the one factory: ``runner`` and the tests get all four from
it, wired the same way, instead of assembling them by hand.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from modelsync import defaults
from modelsync.api.envelope import Verdict
from modelsync.errors import ExitCode

_log = logging.getLogger("modelsync.runner")

# DESIGN §4, the breaker: after this many retryable failures in a row, with no success
# between them, over at least this many models, new models pause; the API is down when
# the probes fail too: this many models with this many failed probes each, or this long
# of probing without a success.
DOWN_STREAK = 10
DOWN_MODELS = 3
PROBE_MODELS = 3
PROBES_EACH = 2
PROBE_SECONDS = 60.0


class StopFlag:
    """Why the run stops starting new work; the first reason wins. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.exit_code = ExitCode.OK
        self._provisional = False
        self._abandon_at: float | None = None

    def set(self, reason: str, exit_code: ExitCode, *, provisional: bool = False) -> None:
        """Stop, unless already stopped for an earlier reason.

        A provisional reason stops at once and gives way to the next reason with the same
        exit code: the gate, which only knows the HTTP status, stops the run before
        another request can start; the runner then fills in the server's message.
        """
        with self._lock:
            if self.reason is None or (self._provisional and exit_code == self.exit_code):
                self.reason = reason
                self.exit_code = exit_code
                self._provisional = provisional
        self._event.set()

    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def abandon_after(self, seconds: float) -> None:
        """Requests still in flight ``seconds`` from now are abandoned (``--grace``)."""
        with self._lock:
            when = time.monotonic() + max(0.0, seconds)
            self._abandon_at = when if self._abandon_at is None else min(self._abandon_at, when)

    def abandon(self) -> None:
        """Abandon the requests in flight now (a second SIGINT, the --deadline)."""
        with self._lock:
            self._abandon_at = float("-inf")
        self._event.set()

    def should_abandon(self) -> bool:
        """True once in-flight requests are to be abandoned."""
        return self._abandon_at is not None and time.monotonic() >= self._abandon_at

    def sleep(self, seconds: float) -> None:
        """Sleep that a stop cuts short (used for retry backoff)."""
        self._event.wait(max(0.0, seconds))


class AdaptiveGate:
    """Limits requests in flight: halve on 429, add one after enough successes (AIMD).

    Two refinements keep 429s rare, since each one costs a round trip and a wait:
    the limit only grows on successes that ran with every slot taken, and growing back
    to the number in flight that the server last refused takes ``PROBE_FACTOR`` times
    as many successes (until a limit above that level has worked).
    """

    PROBE_FACTOR = 8

    def __init__(
        self, limit: int, *, clock: Callable[[], float] = time.monotonic, cooldown_s: float = 1.0
    ) -> None:
        self.maximum = max(1, limit)
        self.limit = self.maximum
        self._in_flight = 0
        self._successes = 0
        self._last_cut = float("-inf")
        self._refused_at: int | None = None  # requests in flight at a 429
        self._clock = clock
        self._cooldown = cooldown_s
        self._cond = threading.Condition()
        self.throttled = 0
        self.lowest = self.limit

    def acquire(self) -> None:
        """Wait for a free slot."""
        with self._cond:
            while self._in_flight >= self.limit:
                self._cond.wait()
            self._in_flight += 1

    def release(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None:
        """Free the slot and adapt the limit to the answer (``pacing``: slow down)."""
        with self._cond:
            in_flight = self._in_flight
            self._in_flight -= 1
            if pacing or http_status == 429:
                self.throttled += 1
                now = self._clock()
                # Several requests in flight see the same overload: halve once per cooldown.
                if now - self._last_cut >= self._cooldown:
                    self.limit = max(1, self.limit // 2)
                    self._last_cut = now
                # The lowest level refused that no limit has since proven wrong.
                self._refused_at = min(self._refused_at or in_flight, in_flight)
                self.lowest = min(self.lowest, self.limit)
                self._successes = 0
            elif verdict_kind == "submitted" and in_flight >= self.limit:
                # Only successes with every slot taken say anything about a higher limit:
                # counting those of a half-idle gate (workers asleep in a backoff) would
                # raise it back to where the 429s came from just as those workers retry.
                self._successes += 1
                needed = self.limit
                if self._refused_at is not None and self.limit + 1 >= self._refused_at:
                    needed *= self.PROBE_FACTOR
                if self._successes >= needed and self.limit < self.maximum:
                    self.limit += 1
                    self._successes = 0
                    if self._refused_at is not None and self.limit > self._refused_at:
                        self._refused_at = None  # the server has room again
            # Wake as many waiters as there are free slots, not every one of them.
            free = self.limit - self._in_flight
            if free > 0:
                self._cond.notify(free)


class HealthWatch:
    """The breaker: tells a flaky API (pause, probe, resume) from a dead one (stop).

    Closed: every model may start. After ``DOWN_STREAK`` retryable failures in a row
    over ``DOWN_MODELS`` models, with no success between them, it opens: new models
    pause, and the retries already under way act as probes (the runner starts one model
    as a probe when none is under way). Any success closes it again. When the probes
    fail too (``PROBE_MODELS`` models with ``PROBES_EACH`` failed probes each, or
    ``PROBE_SECONDS`` of probing without a success) the API is down: the run stops.
    A refused key, an account that cannot pay, or a moved endpoint stop the run at once.
    """

    def __init__(self, stop: StopFlag, clock: Callable[[], float] = time.monotonic) -> None:
        self._stop = stop
        self._clock = clock
        self._lock = threading.Lock()
        self._streak = 0
        self._models: set[str] = set()
        self._opened_at: float | None = None
        self._probes: dict[str, int] = {}
        self._opened_by = (0, 0)  # the streak and the models that opened the breaker
        self._local = threading.local()
        self.pauses = 0

    def bind(self, model_id: str) -> None:
        self._local.model_id = model_id

    @property
    def paused(self) -> bool:
        """True while new models wait for a probe to succeed."""
        return self._opened_at is not None

    def observe(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None:
        if verdict_kind in ("auth", "account", "redirect"):
            # No request may start after this answer, not even one already waiting for a slot.
            self._stop.set(
                _fatal_reason(verdict_kind, http_status),
                _fatal_code(verdict_kind),
                provisional=True,
            )
            return
        if pacing or http_status == 429:
            return  # pacing, not an outage
        with self._lock:
            if verdict_kind == "submitted":
                self._close()
            elif verdict_kind == "retryable":
                self._failed(getattr(self._local, "model_id", "?"))

    def _close(self) -> None:
        if self._opened_at is not None:
            _log.info("a request succeeded: new models resume")
        self._streak = 0
        self._models.clear()
        self._opened_at = None
        self._probes.clear()

    def _failed(self, model_id: str) -> None:
        self._streak += 1
        self._models.add(model_id)
        if self._opened_at is None:
            if self._streak >= DOWN_STREAK and len(self._models) >= DOWN_MODELS:
                self._opened_at = self._clock()
                self._opened_by = (self._streak, len(self._models))
                self.pauses += 1
                _log.warning(
                    "%d failed attempts in a row over %d models: new models pause while "
                    "retries probe the API",
                    self._streak,
                    len(self._models),
                )
            return
        self._probes[model_id] = self._probes.get(model_id, 0) + 1
        probed = sum(1 for n in self._probes.values() if n >= PROBES_EACH)
        probing = self._clock() - self._opened_at
        if probed >= PROBE_MODELS or probing >= PROBE_SECONDS:
            streak, models = self._opened_by
            self._stop.set(
                f"the API looks down: {streak} failed attempts in a row over {models} models, "
                f"then {sum(self._probes.values())} failed probes over {len(self._probes)} "
                f"models in {probing:.0f} s; stopped starting new submissions",
                ExitCode.FAILED,
            )


def _fatal_reason(verdict_kind: str, http_status: int | None) -> str:
    what = {
        "auth": "authentication failed",
        "account": "the account cannot load models",
        "redirect": "the endpoint redirected",
    }[verdict_kind]
    return f"{what} (HTTP {http_status})" if http_status is not None else what


def _fatal_code(verdict_kind: str) -> ExitCode:
    return ExitCode.FAILED if verdict_kind == "redirect" else ExitCode.AUTH


class WatchedGate:
    """The adaptive gate, reporting every answer to the health watch before freeing its slot.

    The watch hears an answer before anyone else can start a request, so a stop it
    decides (a refused key, no credits, the API down) holds for every request after it.
    The run's first request goes alone: a bad key or an empty account then costs one
    request, not ``--parallelism`` of them sent at once.
    """

    def __init__(self, gate: AdaptiveGate, watch: HealthWatch) -> None:
        self._gate = gate
        self._watch = watch
        self._answered = threading.Event()  # the first answer came back
        self._first = threading.Lock()  # held by the request that goes first
        self._local = threading.local()

    def acquire(self) -> None:
        if not self._answered.is_set():
            self._first.acquire()
            if self._answered.is_set():
                self._first.release()
            else:
                self._local.first = True
        self._gate.acquire()

    def release(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None:
        self._watch.observe(verdict_kind, http_status, pacing)
        self._gate.release(verdict_kind, http_status, pacing)
        if getattr(self._local, "first", False):
            self._local.first = False
            if verdict_kind not in ("stopped", "deadline"):  # these sent nothing
                self._answered.set()
            self._first.release()


class Backoffs:
    """Submissions waiting out a retry backoff, which hold no request slot meanwhile.

    The client sleeps through :meth:`sleep` between attempts, and the runner starts
    another submission for each one asleep: ``--parallelism`` bounds the requests in
    flight (the gate), not the models waiting to retry. With 10% of answers a 5xx,
    backoffs would otherwise keep the workers idle longer than the requests keep them busy.
    A wait the server asked for (a 429, a Retry-After) is pacing, not a backoff: that
    submission keeps its place, since more submissions would only be refused too.
    """

    # At most this many submissions per worker are started at once (asleep or not).
    ROOM = 4

    def __init__(self, stop: StopFlag) -> None:
        self._stop = stop
        self.changed = threading.Condition()  # also wakes the runner when a submission ends
        self.asleep = 0
        self._local = threading.local()

    def before_sleep(self, _attempts: int, verdict: Verdict, _wait: float) -> None:
        """The client's ``on_retry``: tells whether the coming wait is pacing."""
        self._local.pacing = verdict.pacing or verdict.retry_after is not None

    def sleep(self, seconds: float) -> None:
        """Wait before a retry (a stop cuts it short); a backoff counts as asleep."""
        pacing = getattr(self._local, "pacing", False)
        self._local.pacing = False
        if pacing:
            self._stop.sleep(seconds)
            return
        with self.changed:
            self.asleep += 1
            self.changed.notify_all()
        try:
            self._stop.sleep(seconds)
        finally:
            with self.changed:
                self.asleep -= 1


@dataclass(frozen=True)
class Controls:
    """Everything that paces and stops one run, wired together."""

    stop: StopFlag
    gate: AdaptiveGate  # the bare limiter (its numbers are reported)
    watched: WatchedGate  # the gate to give the transport
    watch: HealthWatch
    backoffs: Backoffs


def build_controls(
    parallelism: int, stop: StopFlag | None = None, *, clock: Callable[[], float] = time.monotonic
) -> Controls:
    """The gate, the health watch and the backoffs of a run, wired to one stop flag."""
    stop = stop if stop is not None else StopFlag()
    gate = AdaptiveGate(parallelism, clock=clock)
    watch = HealthWatch(stop, clock)
    return Controls(stop, gate, WatchedGate(gate, watch), watch, Backoffs(stop))


@contextlib.contextmanager
def stop_on_signals(
    stop: StopFlag, announce: Callable[[str], None], grace: float = defaults.GRACE_S
) -> Iterator[None]:
    """SIGINT/SIGTERM: start nothing new, give in-flight requests ``grace`` s, exit 130/143.

    A second signal abandons them at once (they stay recorded ``pending``); a third one
    ends the process the default way. Only the main thread can take signals; elsewhere
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) == 1:
            code = ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM
            stop.set(f"interrupted by {name}", code)
            stop.abandon_after(grace)
            announce(
                f"{name}: finishing the requests in flight, starting no new ones "
                f"(at most {grace:g} s; again to abandon them now)..."
            )
            return
        stop.abandon()
        announce(f"{name} again: abandoning the requests in flight (recorded pending)")
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)
