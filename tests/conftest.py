"""Test guards that make the dangerous defaults impossible.

- No test reaches the network: every socket connect to an address outside
  127.0.0.0/8 or ::1 raises.
- No test sees the developer's key, endpoint or state location from the environment.
- The process-wide secret registry starts empty for every test.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from modelsync import redact
from tests.helpers import Cli

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkBlocked(RuntimeError):
    """Raised when a test tries to reach a host that is not loopback."""


def _check_address(address: Any) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host == "localhost":
                return
            raise NetworkBlocked(f"test tried to reach {host!r}") from None
        if not ip.is_loopback:
            raise NetworkBlocked(f"test tried to reach {host!r}")
    # AF_UNIX paths and the like are local.


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MODELSYNC_API_KEY",
        "MODELSYNC_ENDPOINT",
        "MODELSYNC_STATE",
        "CIVITAI_TOKEN",
        "HF_TOKEN",
        "NO_COLOR",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    redact.clear_secrets()
    yield
    redact.clear_secrets()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``modelsync ARGS`` in-process: (exit code, stdout, stderr)."""
    return Cli(capsys)
