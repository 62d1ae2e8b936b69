"""What many tests share, in one place: the endpoint, a fake clock, a client, a CLI runner."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from modelsync.api.modelslab import ModelsLab
from modelsync.api.transport import RetryPolicy, Transport
from modelsync.cli import main

# The endpoint of tests that talk to a mocked API (requests-mock); never the real host.
ENDPOINT = "https://api.test/api/v3/load_model"

_POLICY_FIELDS = ("max_attempts", "max_retry_after", "backoff_base", "backoff_cap")


class FakeClock:
    """A monotonic clock that only moves when told to; sleep() records and advances."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def make_client(endpoint: str, api_key: str, **options: Any) -> ModelsLab:
    """A ModelsLab client over a Transport built from flat keyword options (tests only)."""
    policy = RetryPolicy(**{k: options.pop(k) for k in _POLICY_FIELDS if k in options})
    options.setdefault("rng", random.Random(1234))
    transport = Transport(secret=api_key, policy=policy, **options)
    return ModelsLab(endpoint, api_key, transport)


class Cli:
    """Runs ``modelsync ARGS`` in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = self._capsys.readouterr()
        return code, out, err
