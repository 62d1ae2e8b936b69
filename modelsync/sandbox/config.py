"""How a sandbox behaves (:class:`SandboxConfig`) and the error it raises when it cannot start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsync import defaults
from modelsync.errors import ExitCode, ModelsyncError, UsageError

_RATES = ("fail_rate", "reset_rate", "garbage_rate")


class SandboxError(ModelsyncError):
    """The sandbox could not start (port taken, request log not writable...)."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox behaves: address, key, timing, limits and injected faults."""

    host: str = defaults.SANDBOX_HOST
    port: int = 0  # 0 = a free port
    api_key: str = defaults.SANDBOX_KEY
    latency_ms: float = 0.0
    load_seconds: float = defaults.SANDBOX_LOAD_SECONDS
    max_queued: int = defaults.SANDBOX_MAX_QUEUED
    retry_after: int = defaults.SANDBOX_RETRY_AFTER_S
    fail_rate: float = 0.0
    reset_rate: float = 0.0
    garbage_rate: float = 0.0
    seed: int | None = None
    request_log: Path | None = None
    # The older error envelopes (errors in HTTP 200 bodies, object messages, ``messege``)
    # instead of the published 400/401 ``{status, message, code}``: see sandbox.reply.
    legacy_errors: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0-65535, got {self.port}")
        if not self.api_key:
            problems.append("api_key must not be empty")
        for name in ("latency_ms", "load_seconds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_queued < 1:
            problems.append(f"max_queued must be >= 1, got {self.max_queued}")
        if self.retry_after < 0:
            problems.append(f"retry_after must be >= 0, got {self.retry_after}")
        for name in _RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        # The rates partition one draw, so together they cannot exceed certainty.
        if sum(getattr(self, name) for name in _RATES) > 1.0 + 1e-9:
            problems.append("fail_rate + reset_rate + garbage_rate must be at most 1")
        if problems:
            raise UsageError("sandbox: " + "; ".join(problems))
