"""Test guards that make the dangerous defaults impossible.

- No test reaches the network: every socket connect to an address outside
  127.0.0.0/8 or ::1 raises.
- No test sees the developer's key, endpoint or state location from the environment.
- The process-wide secret registry starts empty for every test.
- No test writes a state in the repository (the default state of ``manifests/example.yaml``
  is ``manifests/.modelsync/example.state.json``, in the work tree) or in the real home:
  opening a state writer there fails the test at once, and a ``.modelsync`` folder of the
  repository that appears or changes during a test (a child process) fails it afterwards.
- HOME is a fresh temporary folder for every test.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from modelsync import redact
from modelsync.store import file as file_store
from tests.helpers import Cli

REPO = Path(__file__).resolve().parents[1]
# Read before any test replaces HOME.
REAL_HOME = Path.home().resolve()
# Where no test may write a state; a home of "/" (some containers) would be everything.
PROTECTED = (REPO,) if Path(REAL_HOME.anchor) == REAL_HOME else (REPO, REAL_HOME)

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
        "GITHUB_ACTIONS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    redact.clear_secrets()
    yield
    redact.clear_secrets()


# --------------------------------------------------------------------------- the home


@pytest.fixture(scope="session")
def _homes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("homes")


@pytest.fixture(autouse=True)
def _fake_home(monkeypatch: pytest.MonkeyPatch, _homes: Path) -> None:
    # mkdtemp, not tmp_path_factory.mktemp: that one lists the base folder every time.
    home = Path(tempfile.mkdtemp(prefix="home-", dir=_homes))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    # Unset, these follow HOME; set, they would lead back to the real ones.
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- the state

_STATE_FOLDER = ".modelsync"
# Folders of the work tree that never hold a manifest.
_SKIPPED_FOLDERS = {"__pycache__", "build", "dist", "node_modules", "venv"}


class StateGuard:
    """Refuses state writes under ``protected`` folders, except under ``allowed`` ones."""

    def __init__(self, protected: Sequence[Path], allowed: Sequence[Path]) -> None:
        self.protected = [p.resolve() for p in protected]
        self.allowed = [p.resolve() for p in allowed]
        self.violations: list[Path] = []

    def check_write(self, path: str | Path) -> None:
        """Fail the running test if ``path`` is a state it must never write."""
        target = Path(path).resolve()
        if any(target.is_relative_to(a) for a in self.allowed):
            return
        for root in self.protected:
            if target.is_relative_to(root):
                self.violations.append(target)
                # pytest.fail raises a BaseException: the CLI's error handler cannot
                # turn it into an exit code, so the test stops here.
                pytest.fail(
                    f"a test opened the state {target} for writing, inside {root}: a test"
                    " must never write the real default state; pass --state under tmp_path"
                    " or copy the manifest into tmp_path"
                )


@functools.cache
def watched_folders(repo: Path = REPO) -> tuple[Path, ...]:
    """The repository's folders that could get a default state: the root, the usual
    folders and every folder holding a YAML manifest (found once per session)."""
    folders = {repo, *(repo / n for n in ("manifests", "docs", "tests", "benchmarks"))}
    for folder, subfolders, files in os.walk(repo):
        subfolders[:] = [
            d
            for d in subfolders
            if not d.startswith(".") and d not in _SKIPPED_FOLDERS and not d.endswith(".egg-info")
        ]
        if any(f.endswith((".yaml", ".yml")) for f in files):
            folders.add(Path(folder))
    return tuple(sorted(folders))


Snapshot = Mapping[Path, frozenset[tuple[str, int, int]] | None]


def snapshot_state_folders(folders: Iterable[Path]) -> Snapshot:
    """``<folder>/.modelsync`` of each folder: its entries (name, mtime, size), or None."""
    snapshot: dict[Path, frozenset[tuple[str, int, int]] | None] = {}
    for folder in folders:
        state_folder = folder / _STATE_FOLDER
        try:
            with os.scandir(state_folder) as entries:
                snapshot[state_folder] = frozenset(
                    (e.name, s.st_mtime_ns, s.st_size)
                    for e in entries
                    for s in (e.stat(follow_symlinks=False),)
                )
        except FileNotFoundError:
            snapshot[state_folder] = None
    return snapshot


def state_folder_changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed between two snapshots, one line per path."""
    changes: list[str] = []
    for folder, entries in after.items():
        old = before.get(folder)
        if entries == old:
            continue
        if old is None:
            changes.append(f"{folder} appeared")
        if entries is None:
            changes.append(f"{folder} disappeared")
            continue
        old_names = {name: (mtime, size) for name, mtime, size in old or ()}
        for name, mtime, size in sorted(entries):
            if name not in old_names:
                changes.append(f"{folder / name} appeared")
            elif old_names[name] != (mtime, size):
                changes.append(f"{folder / name} changed")
        for name in sorted(set(old_names) - {name for name, _, _ in entries}):
            changes.append(f"{folder / name} disappeared")
    return changes


@pytest.fixture(autouse=True)
def state_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StateGuard]:
    """Every state writer is checked (in this process); the repository's ``.modelsync``
    folders are compared before and after the test (child processes too)."""
    guard = StateGuard(protected=PROTECTED, allowed=[tmp_path_factory.getbasetemp()])
    # StateStore is the one writer of the file backend (FileBackend.open_writer and
    # the tests that use it directly); checked before it creates any folder or lock.
    real_init = file_store.StateStore.__init__

    def guarded_init(self: Any, path: Path, *args: Any, **kwargs: Any) -> None:
        guard.check_write(path)
        real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(file_store.StateStore, "__init__", guarded_init)
    folders = watched_folders()
    before = snapshot_state_folders(folders)
    yield guard
    if guard.violations:
        pytest.fail(
            "the test tried to write these states (and caught the failure): "
            + ", ".join(map(str, guard.violations)),
            pytrace=False,
        )
    changes = state_folder_changes(before, snapshot_state_folders(folders))
    if changes:
        pytest.fail(
            "the test wrote a state in the repository: "
            + "; ".join(changes)
            + ". A test must pass --state under tmp_path or copy the manifest into tmp_path;"
            " delete what it wrote.",
            pytrace=False,
        )


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``modelsync ARGS`` in-process: (exit code, stdout, stderr)."""
    return Cli(capsys)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts with the ``modelsync`` logger as Python leaves it.

    A CLI run installs a handler on the stderr of its own test (pytest's capture) and
    stops propagation: left in place, the next test's log lines go to a closed stream
    and never reach caplog.
    """
    yield
    logger = logging.getLogger("modelsync")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
