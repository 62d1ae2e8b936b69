"""What many tests share, in one place: the endpoint, a fake clock, a client, a CLI runner."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modelsync.api.modelslab import ModelsLab
from modelsync.api.retry import RetryPolicy
from modelsync.api.transport import Transport
from modelsync.cli import main

# The endpoint of tests that talk to a mocked API (requests-mock); never the real host.
ENDPOINT = "https://api.test/api/v3/load_model"

_POLICY_FIELDS = ("max_attempts", "max_retry_after", "backoff_base", "backoff_cap")


def numbered(count: int, prefix: str = "model") -> list[str]:
    """``model-000``, ``model-001``...: ``count`` model ids."""
    return [f"{prefix}-{i:03d}" for i in range(count)]


def write_models_manifest(path: Path, ids: Sequence[str]) -> list[str]:
    """A manifest of safetensors models with direct https links; their ids."""
    lines = ["version: 1", "models:"]
    for model_id in ids:
        lines += [
            f"  - model_id: {model_id}",
            f"    url: https://models.example.com/files/{model_id}.safetensors",
            "    model_format: safetensors",
            "    model_category: stable_diffusion",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list(ids)


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


class EdgeRandom(random.Random):
    """A Random whose uniform() gives one end of its range: no jitter, or the most."""

    def __init__(self, high: bool = False) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


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
