"""Runs a Plan through the ModelsLab client and records every result as it comes.

Concurrency is bounded twice: worker threads, and the adaptive gate of
:mod:`modelsync.controls` that halves the requests in flight on a 429 (the service
limits *queued requests per account*) and raises it again slowly after successes.
The run stops early on an auth or credit failure (exit 5), when the API looks down
(exit 1), on the deadline (exit 1), or on SIGINT/SIGTERM (130/143); every independent
entry is otherwise attempted and every failure reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from modelsync import defaults
from modelsync.api.modelslab import ModelsLab
from modelsync.api.retry import CallResult
from modelsync.controls import Backoffs, Controls, StopFlag
from modelsync.errors import ExitCode, StateError
from modelsync.plan import Change, Plan, resend_force_load
from modelsync.records import new_record, utc_now
from modelsync.store import StateWriter

log = logging.getLogger("modelsync.runner")

Outcome = Literal["submitted", "failed", "conflict", "skipped"]


@dataclass(frozen=True)
class ApplyOptions:
    """The knobs of a run (the CLI's flags)."""

    parallelism: int = defaults.PARALLELISM
    deadline_s: float | None = None
    forget_orphans: bool = False
    grace_s: float = defaults.GRACE_S


@dataclass(frozen=True)
class ModelResult:
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

    results: tuple[ModelResult, ...]
    unchanged: int
    exit_code: ExitCode
    stop_reason: str | None = None
    forgotten: tuple[str, ...] = ()
    state_error: str | None = None  # the state could not record: the run stopped (exit 4)
    rate_limited: int = 0  # answers that asked to slow down (429s): pacing, for metrics
    duration_s: float = 0.0  # from the first submission to the last result

    @property
    def summary(self) -> dict[str, int]:
        """Counts per outcome, plus unchanged."""
        counts = {"submitted": 0, "failed": 0, "conflict": 0, "skipped": 0}
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


def run_apply(
    plan: Plan,
    writer: StateWriter,
    client: ModelsLab,
    *,
    options: ApplyOptions,
    controls: Controls,
    on_result: Callable[[ModelResult], None] = lambda _r: None,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Submit every create/update/retry of ``plan``, recording each result as it comes."""
    stop = controls.stop
    started = clock()
    deadline = None if options.deadline_s is None else started + options.deadline_s
    todo = plan.to_submit
    results: dict[str, ModelResult] = {}

    def done(result: ModelResult) -> None:
        results[result.model_id] = result
        on_result(result)

    for change in plan.changes:
        if change.action == "conflict":
            done(_conflict(change))
    pool = _Pool(todo, options.parallelism, controls, deadline, clock, client.transport.abort_all)
    if todo:
        submitter = _Submitter(writer, client, controls, deadline, clock)
        pool.run(submitter.submit, done)

    forgotten: tuple[str, ...] = ()
    if options.forget_orphans and not stop.is_set():
        forgotten = tuple(c.model_id for c in plan.changes if c.action == "orphan")
        if forgotten:
            writer.forget(forgotten)

    ordered = tuple(results[c.model_id] for c in plan.changes if c.model_id in results)
    exit_code = stop.exit_code
    if exit_code == ExitCode.OK and any(r.outcome != "submitted" for r in ordered):
        exit_code = ExitCode.FAILED
    return Report(
        results=ordered,
        unchanged=plan.summary["unchanged"],
        exit_code=exit_code,
        stop_reason=stop.reason,
        forgotten=forgotten,
        state_error=pool.state_error,
        rate_limited=controls.gate.throttled,
        duration_s=clock() - started,
    )


class _Pool:
    """Runs submissions on up to ``threads`` threads, collects them as they end.

    A thread that ends a submission starts the next one itself while there is room (no
    hop through the main thread between two requests: each hop waits for the GIL). The
    main thread starts the first ones, starts more when a backoff or the breaker frees
    room, reports results in order of arrival, and keeps the run's time bounds: at the
    ``--deadline``, at the end of the ``--grace`` after a signal, or at a second SIGINT,
    it abandons the requests in flight (their state stays ``pending``) instead of
    waiting for their answers.
    """

    def __init__(
        self,
        todo: tuple[Change, ...],
        parallelism: int,
        controls: Controls,
        deadline: float | None,
        clock: Callable[[], float],
        abort: Callable[[str], None],
    ) -> None:
        self.queue = list(reversed(todo))
        self.workers = max(1, min(parallelism, len(todo)))
        # Room for submissions asleep in a backoff, which hold no request slot.
        self.threads = max(1, min(len(todo), self.workers * Backoffs.ROOM))
        self.stop = controls.stop
        self.watch = controls.watch
        self.backoffs = controls.backoffs
        self.changed = controls.backoffs.changed  # guards what follows
        self.deadline = deadline
        self.clock = clock
        self.abort = abort
        self.abandoned = False
        self.closed = False
        self.state_error: str | None = None
        self.active = 0  # submissions started and not ended
        self.ended: list[tuple[Change, ModelResult | None, BaseException | None]] = []

    def room(self) -> bool:
        # Called with `changed` held. At most `workers` submissions started and not asleep
        # in a backoff, and no more than the pool's threads: a stop then leaves the rest
        # unstarted instead of queued inside the pool. While the breaker is open, new
        # models wait; one goes as a probe when no retry is under way to probe for them.
        return (
            bool(self.queue)
            and not self.closed
            and self.active < self.threads
            and self.active - self.backoffs.asleep < self.workers
            and not self.stop.is_set()
            and (self.deadline is None or self.clock() < self.deadline)
            and (not self.watch.paused or not self.active)
        )

    def run(
        self,
        work: Callable[[Change], ModelResult],
        done: Callable[[ModelResult], None],
    ) -> None:
        changed = self.changed
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="modelsync") as pool:
            try:
                self._supervise(pool, work, done)
            except BaseException:
                with changed:
                    self.closed = True  # the threads start nothing more
                raise
        for change in reversed(self.queue):
            done(skipped(change, self.stop.reason or "the run stopped"))

    def _supervise(
        self,
        pool: ThreadPoolExecutor,
        work: Callable[[Change], ModelResult],
        done: Callable[[ModelResult], None],
    ) -> None:
        changed = self.changed
        while True:
            self._keep_time()
            with changed:
                while self.room():
                    pool.submit(self._submissions, work, self._take())
                if not self.ended and self.active:
                    changed.wait(timeout=0.2)
                ended, self.ended = self.ended, []
                # Nothing runs, nothing ended to report, and nothing left may start.
                finished = not self.active and not ended and not self.room()
            for change, result, error in ended:
                done(self._collect(change, result, error))
            if finished:
                return

    def _take(self) -> Change:
        self.active += 1
        return self.queue.pop()

    def _submissions(self, work: Callable[[Change], ModelResult], change: Change) -> None:
        """Submit ``change``, then the next ones while there is room (on a pool thread)."""
        next_change: Change | None = change
        while next_change is not None:
            current, next_change = next_change, None
            result: ModelResult | None = None
            error: BaseException | None = None
            try:
                result = work(current)
            except BaseException as exc:  # reported by the main thread
                error = exc
            with self.changed:
                self.active -= 1
                self.ended.append((current, result, error))
                if error is None and self.room():
                    next_change = self._take()
                self.changed.notify_all()

    def _collect(
        self, change: Change, result: ModelResult | None, error: BaseException | None
    ) -> ModelResult:
        if error is None:
            assert result is not None
            return result
        if not isinstance(error, StateError):
            raise error
        # The state can record nothing more: stop, keep what was recorded, and still
        # report what happened (exit 4).
        self.state_error = self.state_error or str(error)
        self.stop.set(f"the state could not record a result: {error}", ExitCode.STATE)
        self.stop.abandon()
        return ModelResult(
            change.model_id, change.action, "failed", 0, None, f"not recorded: {error}", 0.0
        )

    def _keep_time(self) -> None:
        if self.deadline is not None and self.clock() >= self.deadline:
            self.stop.set("the --deadline passed", ExitCode.FAILED)
            self.stop.abandon()
        if not self.abandoned and self.stop.should_abandon():
            self.abandoned = True
            self.abort(self.stop.reason or "the run stopped")


def _conflict(change: Change) -> ModelResult:
    """A model planned as a conflict: skipped, and reported as one."""
    message = (
        "a model of this id is on the account and modelsync did not put it there "
        "(an earlier run was told it already exists); not sent"
    )
    return ModelResult(change.model_id, change.action, "conflict", 0, None, message, 0.0)


def skipped(change: Change, reason: str) -> ModelResult:
    """A planned submission that was never started."""
    return ModelResult(
        change.model_id, change.action, "skipped", 0, None, f"not started: {reason}", 0.0
    )


class _Submitter:
    """Submits one change and records what happened to it in the state."""

    def __init__(
        self,
        writer: StateWriter,
        client: ModelsLab,
        controls: Controls,
        deadline: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.writer = writer
        self.client = client
        self.controls = controls
        self.deadline = deadline
        self.clock = clock

    def submit(self, change: Change) -> ModelResult:
        spec = change.spec
        stop = self.controls.stop
        assert spec is not None and change.force_load is not None
        if stop.is_set():
            return skipped(change, stop.reason or "the run stopped")
        request = spec.request(change.force_load)
        previous = change.previous
        # Written before the first POST: if this process dies mid-request, the next run
        # knows the request may have reached the server (and retries with force_load yes).
        first_submitted = previous.submitted_at if previous else None
        self.writer.record(
            spec.model_id,
            new_record(
                spec,
                request,
                "pending",
                submitted_at=first_submitted,
                last_attempt_at=utc_now(),
            ),
        )
        self.controls.watch.bind(spec.model_id)
        # An attempt whose answer was lost may have created the model: from then on the
        # entry is a retry, sent as the next run would send it (force_load yes unless written).
        again = resend_force_load(spec)
        resend = again if again != change.force_load else None
        result = self.client.load_model(
            spec.body(change.force_load),
            model_id=spec.model_id,
            should_stop=stop.is_set,
            deadline=self.deadline,
            resend_body=spec.body(resend) if resend is not None else None,
            on_retry=self.controls.backoffs.before_sleep,
        )
        if result.resent and resend is not None:
            request = spec.request(resend)  # the state keeps the body as last sent
        return self._settle(change, request, result)

    def _settle(self, change: Change, request: dict[str, str], result: CallResult) -> ModelResult:
        """Record the call's end in the state; the model's result."""
        spec = change.spec
        assert spec is not None
        stop = self.controls.stop
        previous = change.previous
        now = utc_now()
        if result.outcome == "submitted":
            record = new_record(
                spec,
                request,
                "submitted",
                attempts=result.attempts,
                submitted_at=now,
                last_attempt_at=now,
                response=result.response,
            )
            self.writer.record(spec.model_id, record)
            return _result(change, "submitted", result)
        if result.attempts == 0:
            # Nothing was sent: put back what the state said before this run.
            if previous is not None:
                self.writer.record(spec.model_id, previous)
            else:
                self.writer.forget([spec.model_id])
            reason = stop.reason or result.message
            if result.outcome == "deadline":
                reason = "the --deadline passed"
                stop.set(reason, ExitCode.FAILED)
            return skipped(change, reason)
        if result.outcome == "abandoned":
            # In flight when the run was abandoned: the "pending" record written before the
            # POST stays, and the next run retries it as a request that may have arrived.
            message = f"{result.message}; recorded pending, the next apply retries it"
            return _result(change, "failed", result, message)
        _stop_for(stop, result)
        record = new_record(
            spec,
            request,
            "failed",
            attempts=result.attempts,
            submitted_at=previous.submitted_at if previous else None,
            last_attempt_at=now,
            response=result.response,
            last_error=result.message,
            cause=result.cause,
        )
        self.writer.record(spec.model_id, record)
        return _result(change, "conflict" if result.cause == "conflict" else "failed", result)


def _stop_for(stop: StopFlag, result: CallResult) -> None:
    """An answer that ends the whole run: a refused key, no credits, a moved endpoint."""
    if result.outcome == "auth":
        stop.set(f"authentication failed: {result.message}", ExitCode.AUTH)
    elif result.outcome == "account":
        stop.set(f"the account cannot load models: {result.message}", ExitCode.AUTH)
    elif result.outcome == "redirect":
        stop.set(f"the endpoint redirected: {result.message}", ExitCode.FAILED)
    # A model whose next attempt would start after the --deadline ends alone; the run
    # ends at the deadline itself (the pool keeps that time).


def _result(
    change: Change, outcome: Outcome, result: CallResult, message: str | None = None
) -> ModelResult:
    return ModelResult(
        change.model_id,
        change.action,
        outcome,
        result.attempts,
        result.http_status,
        message if message is not None else result.message,
        result.duration_s,
    )
