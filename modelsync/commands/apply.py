"""``modelsync apply``: lock the state, plan, submit, record (DESIGN §4)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from modelsync import defaults
from modelsync.controls import StopFlag, build_controls
from modelsync.errors import ExitCode
from modelsync.gcpause import gc_paused
from modelsync.plan import Plan, make_plan
from modelsync.runner import ApplyOptions, ModelResult, Report, run_apply
from modelsync.settings import Settings
from modelsync.store import StateBackend

log = logging.getLogger("modelsync.apply")


@dataclass(frozen=True)
class Applied:
    """What apply did: the plan, the report (None for --dry-run), and what to tell the user."""

    plan: Plan
    state_location: str
    report: Report | None = None
    auth_hint: str | None = None  # the fix, when the run stopped on the key or the account

    @property
    def exit_code(self) -> ExitCode:
        """The process's exit code."""
        return self.report.exit_code if self.report is not None else ExitCode.OK


@dataclass(frozen=True)
class _Run:
    """Where requests go, with which key, and which state records them."""

    url: str
    api_key: str | None  # None: read it from the settings when it is needed
    backend: StateBackend
    key_source: str


@contextlib.contextmanager
def _sandboxed(settings: Settings) -> Iterator[_Run]:
    """An in-process sandbox, with its own state beside the real one."""
    from modelsync.sandbox import Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(load_seconds=defaults.SANDBOX_APPLY_LOAD_SECONDS))
    sandbox.start()
    try:
        backend = settings.open_state().for_sandbox(defaults.SANDBOX_ENDPOINT)
        log.info("Sandbox: %s (state %s)", sandbox.load_model_url, backend.location)
        yield _Run(sandbox.load_model_url, defaults.SANDBOX_KEY, backend, "the sandbox's own key")
    finally:
        sandbox.stop()


@contextlib.contextmanager
def _real(settings: Settings) -> Iterator[_Run]:
    yield _Run(settings.target_endpoint, None, settings.open_state(), settings.key_source())


def apply(
    settings: Settings,
    options: ApplyOptions,
    *,
    sandbox: bool = False,
    dry_run: bool = False,
    stop: StopFlag | None = None,
    on_plan: Callable[[Plan, str], None] = lambda _p, _s: None,
    on_result: Callable[[ModelResult], None] = lambda _r: None,
) -> Applied:
    """Validate, lock, plan, submit every create/update/retry, and record each result."""
    settings.manifest  # noqa: B018 -- the whole manifest is validated before anything else
    with (_sandboxed if sandbox else _real)(settings) as run:
        if dry_run:
            the_plan = make_plan(settings.manifest, run.backend.read(), settings.selection)
            on_plan(the_plan, run.backend.location)
            return Applied(the_plan, run.backend.location)
        api_key = run.api_key if run.api_key is not None else settings.api_key()
        controls = build_controls(options.parallelism, stop)
        with run.backend.open_writer(
            lock_timeout=settings.lock_timeout, command=settings.command
        ) as writer:
            with gc_paused():  # the state's records and the plan: large, and without cycles
                the_plan = make_plan(settings.manifest, writer.state, settings.selection)
            on_plan(the_plan, run.backend.location)
            with settings.create_client(run.url, api_key, controls) as client:
                report = run_apply(
                    the_plan,
                    writer,
                    client,
                    options=options,
                    controls=controls,
                    on_result=on_result,
                )
    hint = None
    if report.exit_code == ExitCode.AUTH:
        hint = (
            f"{report.stop_reason}; nothing more was sent. The API key (not shown) comes "
            f"from {run.key_source}: check that it is valid and that its account has "
            "credits, then run apply again."
        )
    return Applied(the_plan, run.backend.location, report, hint)
