"""The file backend: a JSON snapshot, an fsynced journal, an OS lock (DESIGN §2)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from modelsync.records import State
from modelsync.state import (
    StateStore,
    _describe_holder,
    _lock_info_path,
    read_state,
    sandbox_state_path,
)
from modelsync.store import StateWriter


class FileBackend:
    """A state kept in a file (see the module docstring)."""

    def __init__(self, location: str | Path, endpoint: str) -> None:
        self.path = Path(location)
        self.endpoint = endpoint

    @property
    def location(self) -> str:
        """The state file's path."""
        return str(self.path)

    def read(self) -> State:
        """The state, without the lock and without writing anything."""
        return read_state(self.path, self.endpoint)

    def open_writer(
        self, *, lock_timeout: float, command: str
    ) -> AbstractContextManager[StateWriter]:
        """Take the lock and open the state to write."""
        return StateStore(self.path, self.endpoint, lock_timeout=lock_timeout, command=command)

    def describe_holder(self) -> str:
        """Who holds the lock, from the lock-info file."""
        return _describe_holder(_lock_info_path(self.path))

    def for_sandbox(self, endpoint: str) -> FileBackend:
        """``prod.state.json`` -> ``prod.sandbox.state.json``, beside it."""
        return FileBackend(sandbox_state_path(self.path), endpoint)
