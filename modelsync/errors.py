"""The one exception root and the exit codes of DESIGN §5.

Core code raises a ``ModelsyncError`` subclass; ``modelsync.error_handler`` is the one
place that turns it into a message on stderr and an exit code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Process exit codes; pipelines depend on these numbers."""

    OK = 0
    FAILED = 1
    CHANGES = 2
    MANIFEST = 3
    STATE = 4
    AUTH = 5
    USAGE = 64
    INTERNAL = 70
    SIGINT = 130
    SIGTERM = 143


class ModelsyncError(Exception):
    """Root of every error modelsync reports to a user (never a traceback)."""

    exit_code: ExitCode = ExitCode.INTERNAL


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a manifest, at a position, with the fix."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ManifestError(ModelsyncError):
    """The manifest is invalid; carries every diagnostic, sorted by position."""

    exit_code = ExitCode.MANIFEST

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__()

    def __str__(self) -> str:
        # Joined only when asked: the CLI prints the diagnostics one by one, and 100,000 of
        # them joined up front held tens of MB that nobody read.
        return "\n".join(str(d) for d in self.diagnostics)


class StateError(ModelsyncError):
    """The state is locked, unreadable, untrusted or not writable."""

    exit_code = ExitCode.STATE


class StateLockedError(StateError):
    """Another run holds the state lock."""


class AuthError(ModelsyncError):
    """The API key is missing or refused, or the account cannot pay: the run stops."""

    exit_code = ExitCode.AUTH


class OutputError(ModelsyncError):
    """A report or another output file could not be written after the run."""

    exit_code = ExitCode.FAILED


class UsageError(ModelsyncError):
    """A command-line usage error (bad flag combination, bad selector...)."""

    exit_code = ExitCode.USAGE
