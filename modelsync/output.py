"""Rendering for people and pipelines: diagnostics, plans, reports, logs; all redacted.

Logs and progress go to stderr; the product (plan, report, JSON) goes to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import click

from modelsync.errors import Diagnostic
from modelsync.redact import RedactingFilter, redact

LOGGER_NAME = "modelsync"


def plural(n: int, word: str) -> str:
    """``1 model``, ``2 models``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def color_enabled(choice: str, stream: IO[str]) -> bool:
    """Colour for ``--color`` auto/always/never; NO_COLOR (any value) means never."""
    if choice == "never" or os.environ.get("NO_COLOR", "") != "":
        return False
    if choice == "always":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """Write redacted text to stdout (the product) or stderr (everything else)."""
    click.echo(redact(text), err=err, nl=nl)


def print_diagnostics(diagnostics: Iterable[Diagnostic]) -> None:
    """Print manifest problems on stderr, one per line, sorted by position."""
    for diagnostic in sorted(diagnostics):
        echo(str(diagnostic), err=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in ("model_id", "attempt", "http_status", "outcome"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class _TextFormatter(logging.Formatter):
    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        model_id = getattr(record, "model_id", None)
        if model_id:
            message = f"{model_id}: {message}"
        level = record.levelname.lower()
        if record.levelno >= logging.WARNING:
            prefix = f"{level}: "
            if self.color:
                prefix = click.style(
                    prefix, fg="red" if record.levelno >= logging.ERROR else "yellow"
                )
            message = prefix + message
        return redact(message)


def setup_logging(verbosity: int, log_format: str, *, color: bool) -> logging.Logger:
    """One stderr handler on the ``modelsync`` logger, with the redacting filter."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter(color))
    logger.addHandler(handler)
    logger.propagate = False
    if verbosity >= 2:
        level = logging.DEBUG
    elif verbosity >= 0:
        level = logging.INFO
    else:
        level = logging.WARNING
    logger.setLevel(level)
    return logger
