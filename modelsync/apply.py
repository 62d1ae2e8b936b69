"""Runs a Plan through the load_model client and records every result as it comes.

Concurrency is bounded twice: ``--parallelism`` worker threads, and an adaptive gate
(:class:`AdaptiveGate`) that halves the number of requests in flight on a 429 (the
service limits *queued requests per account*) and raises it again slowly after
successes. The run stops early on an auth or credit failure (exit 5), when the API
looks down (exit 1), on the deadline (exit 1), or on SIGINT/SIGTERM (130/143); every
independent entry is otherwise attempted and every failure reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from modelsync.client import LoadModelClient, SubmitResult, Verdict
from modelsync.errors import ExitCode
from modelsync.plan import Change, Plan, force_load_for
from modelsync.records import ModelRecord, ModelSpec, Status, utc_now
from modelsync.state import StateStore

log = logging.getLogger("modelsync.apply")

Outcome = Literal["submitted", "failed", "skipped"]

# DESIGN §4: the API is down after this many retryable failures in a row, with no
# success between them, over at least this many models.
DOWN_STREAK = 10
DOWN_MODELS = 3


@dataclass(frozen=True)
class ApplyOptions:
    """The knobs of a run (the CLI's flags)."""

    parallelism: int = 4
    deadline_s: float | None = None
    forget_orphans: bool = False


@dataclass(frozen=True)
class Result:
    """What happened to one planned submission."""

    model_id: str
    action: str
    outcome: Outcome
    attempts: int
    http_status: int | None
    message: str
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        """The result in the report shape of DESIGN §4."""
        return {
            "model_id": self.model_id,
            "action": self.action,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "http_status": self.http_status,
            "message": self.message,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class Report:
    """The run: every result, the unchanged count, why it stopped, its exit code."""

    results: tuple[Result, ...]
    unchanged: int
    exit_code: ExitCode
    stop_reason: str | None = None
    forgotten: tuple[str, ...] = ()

    @property
    def summary(self) -> dict[str, int]:
        """Counts per outcome, plus unchanged."""
        counts = {"submitted": 0, "failed": 0, "skipped": 0}
        for result in self.results:
            counts[result.outcome] += 1
        counts["unchanged"] = self.unchanged
        return counts

    def to_json(self) -> dict[str, Any]:
        """The report of DESIGN §4 (``--output json``, ``--report FILE``)."""
        document: dict[str, Any] = {
            "format_version": 1,
            "summary": self.summary,
            "results": [r.to_json() for r in self.results],
        }
        if self.stop_reason:
            document["stop_reason"] = self.stop_reason
        if self.forgotten:
            document["forgotten"] = list(self.forgotten)
        return document


class StopFlag:
    """Why the run stops starting new work; the first reason wins. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.exit_code = ExitCode.OK
        self._provisional = False

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

    def sleep(self, seconds: float) -> None:
        """Sleep that a stop cuts short (used for retry backoff)."""
        self._event.wait(max(0.0, seconds))


class AdaptiveGate:
    """Limits requests in flight: halve on 429, add one after enough successes (AIMD).

    Two refinements keep 429s rare, since each one costs an entry one of its attempts:
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

    def release(self, verdict_kind: str, http_status: int | None) -> None:
        """Free the slot and adapt the limit to the answer."""
        with self._cond:
            in_flight = self._in_flight
            self._in_flight -= 1
            if http_status == 429:
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
            self._cond.notify_all()


class _HealthWatch:
    """Detects an API that is down: a streak of retryable failures over several models."""

    def __init__(self, stop: StopFlag) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._streak = 0
        self._models: set[str] = set()
        self._local = threading.local()

    def bind(self, model_id: str) -> None:
        self._local.model_id = model_id

    def observe(self, verdict_kind: str, http_status: int | None) -> None:
        if verdict_kind in ("auth", "account"):
            # No request may start after this answer, not even one already waiting for a slot.
            what = (
                "authentication failed"
                if verdict_kind == "auth"
                else "the account cannot load models"
            )
            status = f" (HTTP {http_status})" if http_status is not None else ""
            self._stop.set(f"{what}{status}", ExitCode.AUTH, provisional=True)
            return
        if http_status == 429:
            return  # pacing, not an outage
        with self._lock:
            if verdict_kind == "submitted":
                self._streak = 0
                self._models.clear()
            elif verdict_kind == "retryable":
                self._streak += 1
                self._models.add(getattr(self._local, "model_id", "?"))
                if self._streak >= DOWN_STREAK and len(self._models) >= DOWN_MODELS:
                    self._stop.set(
                        f"the API looks down: {self._streak} failed attempts in a row "
                        f"over {len(self._models)} models; stopped starting new submissions",
                        ExitCode.FAILED,
                    )


class _WatchedGate:
    """The adaptive gate, reporting every answer to the health watch before freeing its slot.

    The watch hears an answer before anyone else can start a request, so a stop it
    decides (a refused key, no credits, the API down) holds for every request after it.
    The run's first request goes alone: a bad key or an empty account then costs one
    request, not ``--parallelism`` of them sent at once.
    """

    def __init__(self, gate: AdaptiveGate, watch: _HealthWatch) -> None:
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

    def release(self, verdict_kind: str, http_status: int | None) -> None:
        self._watch.observe(verdict_kind, http_status)
        self._gate.release(verdict_kind, http_status)
        if getattr(self._local, "first", False):
            self._local.first = False
            if verdict_kind not in ("stopped", "deadline"):  # these sent nothing
                self._answered.set()
            self._first.release()


def make_gate(parallelism: int, stop: StopFlag) -> tuple[AdaptiveGate, _WatchedGate, _HealthWatch]:
    """The gate to give the client, and the watch that stops the run when the API is down."""
    gate = AdaptiveGate(parallelism)
    watch = _HealthWatch(stop)
    return gate, _WatchedGate(gate, watch), watch


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
        self._local.pacing = verdict.http_status == 429 or verdict.retry_after is not None

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


def run_apply(
    plan: Plan,
    store: StateStore,
    client: LoadModelClient,
    *,
    options: ApplyOptions,
    stop: StopFlag,
    watch: _HealthWatch,
    on_result: Callable[[Result], None] = lambda _r: None,
    clock: Callable[[], float] = time.monotonic,
    backoffs: Backoffs | None = None,
) -> Report:
    """Submit every create/update/retry of ``plan``, recording each result as it comes.

    ``backoffs`` is what the client sleeps through between attempts, when it does.
    """
    deadline = None if options.deadline_s is None else clock() + options.deadline_s
    todo = plan.to_submit
    results: dict[str, Result] = {}
    if backoffs is None:
        backoffs = Backoffs(stop)  # nobody sleeps through it: no submission counts as asleep
    changed = backoffs.changed

    def work(change: Change) -> Result:
        return _submit_one(
            change, store, client, stop, watch, deadline, clock, backoffs.before_sleep
        )

    def ended(_future: Future[Result]) -> None:
        with changed:
            changed.notify_all()

    if todo:
        workers = max(1, min(options.parallelism, len(todo)))
        threads = min(len(todo), workers * Backoffs.ROOM)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="modelsync") as pool:
            pending: dict[Future[Result], Change] = {}
            queue = list(reversed(todo))

            def room() -> bool:
                # At most `workers` submissions started and not asleep in a backoff, and no
                # more than the pool's threads: a stop then leaves the rest unstarted
                # instead of queued inside the pool.
                return (
                    bool(queue)
                    and len(pending) < threads
                    and len(pending) - backoffs.asleep < workers
                    and not stop.is_set()
                )

            while queue or pending:
                while room():
                    if deadline is not None and clock() >= deadline:
                        stop.set("the --deadline passed", ExitCode.FAILED)
                        break
                    change = queue.pop()
                    future = pool.submit(work, change)
                    pending[future] = change
                    future.add_done_callback(ended)
                if not pending:
                    break
                with changed:
                    if not room() and not any(f.done() for f in pending):
                        changed.wait(timeout=0.5)
                done = [f for f in pending if f.done()]
                for future in done:
                    change = pending.pop(future)
                    result = future.result()
                    results[change.model_id] = result
                    on_result(result)
            for change in reversed(queue):
                result = _skipped(change, stop.reason or "the run stopped")
                results[change.model_id] = result
                on_result(result)

    forgotten: tuple[str, ...] = ()
    if options.forget_orphans and not stop.is_set():
        forgotten = tuple(c.model_id for c in plan.changes if c.action == "orphan")
        if forgotten:
            store.forget(forgotten)

    ordered = tuple(results[c.model_id] for c in todo if c.model_id in results)
    exit_code = stop.exit_code
    if exit_code == ExitCode.OK and any(r.outcome != "submitted" for r in ordered):
        exit_code = ExitCode.FAILED
    return Report(
        results=ordered,
        unchanged=plan.summary["unchanged"],
        exit_code=exit_code,
        stop_reason=stop.reason,
        forgotten=forgotten,
    )


def _skipped(change: Change, reason: str) -> Result:
    """A planned submission that was never started."""
    return Result(change.model_id, change.action, "skipped", 0, None, f"not started: {reason}", 0.0)


def _record(
    spec: ModelSpec,
    request: dict[str, str],
    status: Status,
    attempts: int,
    submitted_at: str | None,
    last_attempt_at: str | None,
    response: Mapping[str, Any] | None,
    last_error: str | None,
) -> ModelRecord:
    """The state record of one submission of ``spec``."""
    return ModelRecord(
        fingerprint=spec.fingerprint,
        request=request,
        status=status,
        attempts=attempts,
        submitted_at=submitted_at,
        last_attempt_at=last_attempt_at,
        response=dict(response) if response is not None else None,
        last_error=last_error,
    )


def _submit_one(
    change: Change,
    store: StateStore,
    client: LoadModelClient,
    stop: StopFlag,
    watch: _HealthWatch,
    deadline: float | None,
    clock: Callable[[], float],
    on_retry: Callable[[int, Verdict, float], None] | None = None,
) -> Result:
    spec = change.spec
    assert spec is not None and change.force_load is not None
    if stop.is_set():
        return _skipped(change, stop.reason or "the run stopped")
    request = spec.request(change.force_load)
    previous = change.previous
    # Written before the first POST: if this process dies mid-request, the next run
    # knows the request may have reached the server (and retries with force_load yes).
    first_submitted = previous.submitted_at if previous else None
    store.record(
        spec.model_id,
        _record(spec, request, "pending", 0, first_submitted, utc_now(), None, None),
    )
    watch.bind(spec.model_id)
    # An attempt whose answer was lost may have created the model: from then on the entry
    # is a retry, sent as the next run would send it (force_load yes unless written).
    resend_force_load = force_load_for(spec, "retry")
    resend = resend_force_load if resend_force_load != change.force_load else None
    result: SubmitResult = client.submit(
        spec.body(change.force_load),
        model_id=spec.model_id,
        should_stop=stop.is_set,
        deadline=deadline,
        resend_body=spec.body(resend) if resend is not None else None,
        on_retry=on_retry,
    )
    if result.resent and resend is not None:
        request = spec.request(resend)  # the state keeps the body as last sent
    now = utc_now()
    if result.outcome == "submitted":
        store.record(
            spec.model_id,
            _record(spec, request, "submitted", result.attempts, now, now, result.response, None),
        )
        return Result(
            change.model_id,
            change.action,
            "submitted",
            result.attempts,
            result.http_status,
            result.message,
            result.duration_s,
        )
    if result.attempts == 0:
        # Nothing was sent: put back what the state said before this run.
        if previous is not None:
            store.record(spec.model_id, previous)
        else:
            store.forget([spec.model_id])
        reason = stop.reason or result.message
        if result.outcome == "deadline":
            reason = "the --deadline passed"
            stop.set(reason, ExitCode.FAILED)
        return _skipped(change, reason)
    if result.outcome == "auth":
        stop.set(f"authentication failed: {result.message}", ExitCode.AUTH)
    elif result.outcome == "account":
        stop.set(f"the account cannot load models: {result.message}", ExitCode.AUTH)
    elif result.outcome == "deadline":
        stop.set("the --deadline passed", ExitCode.FAILED)
    store.record(
        spec.model_id,
        _record(
            spec,
            request,
            "failed",
            result.attempts,
            first_submitted,
            now,
            result.response,
            result.message,
        ),
    )
    return Result(
        change.model_id,
        change.action,
        "failed",
        result.attempts,
        result.http_status,
        result.message,
        result.duration_s,
    )
