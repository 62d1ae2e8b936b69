"""The checks and messages every state backend shares (DESIGN §2, §2b).

A state modelsync cannot trust is never read as "nothing submitted", which would submit
every model again. Each backend reads its own storage, then calls these functions, so a
file and a database refuse the same things with the same words:

- :func:`check_format_version` and :func:`check_header` raise :class:`Untrusted` with the
  problem; the backend turns it into a :class:`~modelsync.errors.StateError` with
  :func:`untrusted`, adding how to recover in its own terms (a backup file, a table...);
- :func:`check_lineage` refuses a state whose lineage differs from a copy the backend keeps
  (the file backend's ``.backup``);
- :func:`check_endpoint` refuses a state written for another endpoint;
- :func:`locked` is the "locked" error, naming the holder.
"""

from __future__ import annotations

from modelsync.errors import StateError, StateLockedError

FORMAT_VERSION = 1

# How to point modelsync at another state, whatever the backend: --state takes a path or a URL.
USE_ANOTHER_STATE = "pass --state to use another state"


class Untrusted(Exception):
    """What makes a state untrusted, worded to follow ``state <location>``."""


def untrusted(location: str, problem: str, hint: str) -> StateError:
    """The error for a state that cannot be trusted: the problem, the risk, how to recover."""
    return StateError(
        f"state {location} {problem}; modelsync will not read it as 'nothing submitted',"
        f" which would submit every model again; {hint}"
    )


def check_format_version(version: object) -> None:
    """Untrusted unless ``version`` is the format this modelsync reads."""
    if version != FORMAT_VERSION or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > 1
        raise Untrusted(
            f"has format_version {version!r}, but this modelsync reads format_version"
            f" {FORMAT_VERSION}" + ("; upgrade modelsync to read it" if newer else "")
        )


def check_header(lineage: object, serial: object, endpoint: object) -> None:
    """Untrusted unless lineage and endpoint are non-empty strings and serial a count."""
    if not isinstance(lineage, str) or not lineage:
        raise Untrusted("has no valid lineage (expected a non-empty string)")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise Untrusted(f"has an invalid serial {serial!r} (expected a whole number >= 0)")
    if not isinstance(endpoint, str) or not endpoint:
        raise Untrusted("has no valid endpoint (expected a non-empty string)")


def check_lineage(
    location: str, lineage: str, *, reference: str, reference_lineage: str, fix: str
) -> None:
    """Refuse a state whose lineage differs from ``reference`` (e.g. ``its backup X``)."""
    if reference_lineage != lineage:
        raise StateError(
            f"state {location} has lineage {lineage}, but {reference} has lineage"
            f" {reference_lineage}: the state was replaced by one that belongs to another"
            f" state; {fix}"
        )


def check_endpoint(location: str, stored: str, endpoint: str) -> None:
    """Refuse a state written for another endpoint than the one this run targets."""
    if stored != endpoint:
        raise StateError(
            f"state {location} was written for endpoint {stored}, but this run targets"
            f" {endpoint}; pass --endpoint {stored} to use this state, or pass --state to"
            " keep a separate state per endpoint"
        )


def locked(location: str, holder: str, lock_timeout: float) -> StateLockedError:
    """The error for a state whose run lock another run holds."""
    waited = f" (waited {lock_timeout:g} s)" if lock_timeout > 0 else ""
    return StateLockedError(
        f"state {location} is locked by {holder}{waited}; wait for it, or pass"
        " --lock-timeout SECONDS"
    )
