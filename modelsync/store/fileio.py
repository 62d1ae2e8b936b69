"""File helpers of the file backend: the paths beside a state, durable writes, strict JSON,
the OS lock and the lock-info file that names its holder."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shlex
import socket
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import filelock

from modelsync.errors import StateError
from modelsync.records import utc_now
from modelsync.redact import redact
from modelsync.store.trust import USE_ANOTHER_STATE

FILE_MODE = 0o600
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")


# --------------------------------------------------------------------------- paths


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def backup_path(path: Path) -> Path:
    """``X.state.json.backup``: the previous snapshot."""
    return _sibling(path, ".backup")


def journal_path(path: Path) -> Path:
    """``X.state.json.journal``: the results of a run, one line each."""
    return _sibling(path, ".journal")


def lock_path(path: Path) -> Path:
    """``X.state.json.lock``: the file the OS lock is taken on."""
    return _sibling(path, ".lock")


def lock_info_path(path: Path) -> Path:
    """``X.state.json.lock.info``: who holds the lock."""
    return _sibling(path, ".lock.info")


# --------------------------------------------------------------------------- writing


def atomic_write(target: Path, data: bytes, hint: str, *, durable: bool = True) -> None:
    """Replace ``target`` with ``data`` (temp file, fsync, rename, fsync the folder)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE
        )
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(
            f"cannot write {target}: {reason(exc)}" + (f"; {hint}" if hint else "")
        ) from None
    if durable:
        fsync_dir(target.parent)


def remove_temp_files(folder: Path, targets: Iterable[str]) -> None:
    """Remove the temp files :func:`atomic_write` left for ``targets`` (names in ``folder``)."""
    ours = set(targets)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMP_RE.match(name)
        if match and match.group("target") in ours:
            with contextlib.suppress(OSError):
                os.unlink(folder / name)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in ``folder`` durable, where the filesystem allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- JSON


def dumps_line(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON line, keys sorted."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


def loads(raw: bytes) -> Any:
    """Parse strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; ValueError otherwise."""
    text = raw.decode("utf-8-sig")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --------------------------------------------------------------------------- checks


def identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``path`` is replaced or rewritten; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def exists(path: Path) -> bool:
    """Whether ``path`` exists; a StateError when that cannot be told."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if isinstance(exc, NotADirectoryError):
            return False
        raise StateError(
            f"cannot check {path}: {reason(exc)}; fix the folder's permissions,"
            f" or {USE_ANOTHER_STATE}"
        ) from None
    return True


def reason(exc: OSError) -> str:
    """The OS's words for ``exc``, without the errno and path noise."""
    return exc.strerror or str(exc)


def q(path: Path) -> str:
    """``path`` quoted for a shell command in a message."""
    return shlex.quote(str(path))


# --------------------------------------------------------------------------- lock


def make_lock(path: Path) -> filelock.BaseFileLock:
    """An OS lock (flock) on ``path``, never a soft lock that would outlive its process."""
    try:
        # No silent fallback to a soft (marker file) lock where flock is missing: a soft lock
        # outlives a killed process, which is the stale lock DESIGN §2 rules out.
        return filelock.FileLock(
            str(path), mode=FILE_MODE, thread_local=False, fallback_to_soft=False
        )
    except TypeError:  # filelock releases without ``fallback_to_soft``
        return filelock.FileLock(str(path), mode=FILE_MODE, thread_local=False)


def lock_info(command: str) -> bytes:
    """The lock-info line of this process: pid, user@host, the command (redacted), since."""
    info = {
        "pid": os.getpid(),
        "user": _user(),
        "host": socket.gethostname(),
        "command": redact(command),
        "started_at": utc_now(),
    }
    return dumps_line(info)


def describe_holder(info_path: Path) -> str:
    """Name the lock's holder from its lock-info file; ``another process`` if unknown."""
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict):
        return "another process"
    pid, user, host = info.get("pid"), info.get("user"), info.get("host")
    command, started = info.get("command"), info.get("started_at")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "another process"
    if host == socket.gethostname() and not _pid_alive(pid):
        # Left by a holder that was killed; the live holder has not written its own yet.
        return "another process"
    who = f"{_printable(str(user))}@{_printable(str(host))}"
    what = f', "{_printable(redact(command))}"' if isinstance(command, str) else ""
    since = f" since {_printable(started)}" if isinstance(started, str) else ""
    return f"pid {pid} ({who}{what}){since}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no LOGNAME/USER (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
