"""The commands' core: manifest + state + target -> plan or run. No click here.

Each CLI command turns its flags into one of these calls and renders what comes back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsync import redact
from modelsync.defaults import DEFAULT_ENDPOINT
from modelsync.errors import AuthError, UsageError
from modelsync.manifest import Manifest, load_manifest
from modelsync.plan import Plan, Selection, make_plan
from modelsync.records import ModelRecord, State, fingerprint, utc_now
from modelsync.state import StateStore, default_state_path, read_state, sandbox_state_path

if TYPE_CHECKING:
    # At run time only apply_plan needs them: plan and validate then never import the
    # HTTP client (requests), which is a tenth of their start-up.
    from modelsync.apply import ApplyOptions, Report, Result, StopFlag

SANDBOX_KEY = "sandbox"
# The sandbox listens on a new port each run; its state records this stable name instead.
SANDBOX_ENDPOINT = "sandbox://localhost/api/v3/load_model"


@dataclass(frozen=True)
class Target:
    """Where a run goes: the manifest, the endpoint and the state file."""

    manifest_path: str
    manifest: Manifest
    endpoint: str  # what the state records and checks
    state_path: Path
    send_url: str | None = None  # where requests go, when not the endpoint itself (sandbox)

    @property
    def url(self) -> str:
        """The URL requests are sent to."""
        return self.send_url or self.endpoint


def resolve_target(
    manifest_path: str,
    *,
    endpoint: str | None = None,
    state: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Target:
    """Load the manifest; pick the endpoint and the state path by the documented order."""
    env = os.environ if env is None else env
    manifest = load_manifest(manifest_path, env)
    chosen = endpoint or env.get("MODELSYNC_ENDPOINT") or manifest.endpoint or DEFAULT_ENDPOINT
    state_text = state or env.get("MODELSYNC_STATE")
    state_path = Path(state_text) if state_text else default_state_path(Path(manifest_path))
    return Target(manifest_path, manifest, chosen, state_path)


def compute_plan(target: Target, selection: Selection) -> tuple[Plan, State]:
    """Read the state (read-only) and plan against it."""
    state = read_state(target.state_path, target.endpoint)
    return make_plan(target.manifest, state, selection), state


def read_api_key(manifest: Manifest, api_key_file: str | None, env: Mapping[str, str]) -> str:
    """The key from --api-key-file or the manifest's variable; never from argv or the manifest."""
    if api_key_file:
        try:
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise AuthError(f"cannot read the API key file {api_key_file}: {reason}") from None
        if not key:
            raise AuthError(f"the API key file {api_key_file} is empty")
        redact.register_secret(key)
        return key
    name = manifest.api_key_env
    key = env.get(name, "").strip()
    if not key:
        raise AuthError(
            f"no API key: the environment variable {name} is not set or empty "
            f"(set it, e.g. from your CI secret store, or pass --api-key-file PATH); "
            "nothing was sent"
        )
    redact.register_secret(key)
    return key


@dataclass(frozen=True)
class ClientOptions:
    """The client's knobs (the CLI's flags)."""

    max_attempts: int = 5
    max_retry_after: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@contextmanager
def sandbox_target(target: Target, **config: Any) -> Iterator[Target]:
    """Run against an in-process sandbox, with its own state file beside the real one."""
    from modelsync.sandbox import Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(api_key=SANDBOX_KEY, **config))
    sandbox.start()
    try:
        yield Target(
            target.manifest_path,
            target.manifest,
            SANDBOX_ENDPOINT,
            sandbox_state_path(target.state_path),
            send_url=sandbox.load_model_url,
        )
    finally:
        sandbox.stop()


def apply_plan(
    target: Target,
    selection: Selection,
    *,
    api_key: str,
    options: ApplyOptions,
    client_options: ClientOptions,
    stop: StopFlag,
    lock_timeout: float,
    command: str,
    on_plan: Callable[[Plan], None] = lambda _p: None,
    on_result: Callable[[Result], None] = lambda _r: None,
) -> tuple[Plan, Report]:
    """Lock the state, plan, submit, record: the whole ``apply``."""
    from modelsync.apply import Backoffs, make_gate, run_apply
    from modelsync.client import LoadModelClient

    with StateStore(
        target.state_path, target.endpoint, lock_timeout=lock_timeout, command=command
    ) as store:
        plan = make_plan(target.manifest, store.state, selection)
        on_plan(plan)
        _gate, watched, watch = make_gate(options.parallelism, stop)
        backoffs = Backoffs(stop)
        with LoadModelClient(
            target.url,
            api_key,
            connect_timeout=client_options.connect_timeout,
            read_timeout=client_options.read_timeout,
            max_attempts=client_options.max_attempts,
            max_retry_after=client_options.max_retry_after,
            sleep=backoffs.sleep,
            gate=watched,
        ) as client:
            report = run_apply(
                plan,
                store,
                client,
                options=options,
                stop=stop,
                watch=watch,
                on_result=on_result,
                backoffs=backoffs,
            )
    return plan, report


# --------------------------------------------------------------------------- state commands


def state_rm(target: Target, model_ids: Sequence[str], *, lock_timeout: float) -> list[str]:
    """Drop records from the state (nothing is deleted remotely)."""
    with StateStore(
        target.state_path, target.endpoint, lock_timeout=lock_timeout, command="modelsync state rm"
    ) as store:
        missing = [m for m in model_ids if m not in store.state.models]
        if missing:
            raise UsageError(
                f"not in the state {target.state_path}: {', '.join(missing)} "
                "(see 'modelsync state list')"
            )
        store.forget(model_ids)
    return list(model_ids)


def state_adopt(target: Target, model_ids: Sequence[str], *, lock_timeout: float) -> list[str]:
    """Record models that already exist on the account as submitted, without a request."""
    specs = []
    for model_id in model_ids:
        spec = target.manifest.model(model_id)
        if spec is None:
            raise UsageError(
                f"{model_id!r} is not in {target.manifest_path}: add it to the manifest first, "
                "as it exists on the account"
            )
        specs.append(spec)
    with StateStore(
        target.state_path,
        target.endpoint,
        lock_timeout=lock_timeout,
        command="modelsync state adopt",
    ) as store:
        now = utc_now()
        for spec in specs:
            request = spec.request(spec.force_load or "no")
            store.record(
                spec.model_id,
                ModelRecord(
                    fingerprint=fingerprint(request),
                    request=request,
                    status="submitted",
                    attempts=0,
                    submitted_at=now,
                    last_attempt_at=None,
                    response={"status": "adopted", "message": "recorded by modelsync state adopt"},
                    last_error=None,
                ),
            )
    return [s.model_id for s in specs]


def describe_state(state: State) -> dict[str, Any]:
    """The state as a JSON document (for ``state list --output json``)."""
    return {
        "format_version": 1,
        "state": str(state.location),
        "lineage": state.lineage if state.exists else None,
        "serial": state.serial,
        "endpoint": state.endpoint,
        "models": {k: v.to_json() for k, v in sorted(state.models.items())},
    }
