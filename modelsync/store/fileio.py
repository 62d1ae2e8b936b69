"""File helpers of the file backend: the paths beside a state, reads that never block,
durable writes, strict JSON, the OS lock and the lock-info file that names its holder.

A state path may be anything a user or an attacker put there (DESIGN §2, last bullet):

- a symlink, or a path through a symlinked folder: :func:`resolve` names the file it points
  to, and every path beside the state is derived from that, so two names share one lock;
- a FIFO, a device, a folder or a file of several GiB: :func:`read_file` looks with
  ``stat`` first, opens with ``O_NONBLOCK`` and checks again with ``fstat``, so it never
  waits for a writer that will not come, and reads at most :data:`MAX_FILE_BYTES`;
- JSON nested deep enough to exhaust the interpreter's stack: :func:`loads` measures the
  depth without recursing before it parses (:data:`MAX_DEPTH`); :func:`quick_loads` leaves
  duplicate keys and nesting to its caller, which :func:`json_shape` lets it prove.
"""

from __future__ import annotations

import contextlib
import getpass
import inspect
import json
import os
import re
import shlex
import stat
import uuid
from collections.abc import Iterable, Mapping
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modelsync.errors import StateError
from modelsync.records import utc_now
from modelsync.redact import redact
from modelsync.store.trust import USE_ANOTHER_STATE

if TYPE_CHECKING:
    import filelock

FILE_MODE = 0o600
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")

# No state comes near 1 GiB (100,000 models are about 55 MB); a larger "state" is not one.
MAX_FILE_BYTES = 1 << 30
# A state nests 3 levels (state, models, record) above a server's answer, which apply cuts
# at 32 (redact.MAX_JSON_DEPTH); StateStore.record() refuses a record that would not fit.
MAX_DEPTH = 64


# --------------------------------------------------------------------------- paths


def resolve(path: Path) -> Path:
    """The file ``path`` names, symlinks resolved (of the file and of its folders); ``path``
    itself, as given, when no symlink is involved (messages keep the user's words)."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    # absolute(), not abspath(): ``link/..`` is not the same folder as ``.`` when ``link``
    # is a symlink, so a path with ``..`` is only kept when nothing needed resolving.
    return path if path.absolute() == real else real


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


# --------------------------------------------------------------------------- reading


class NotAFile(Exception):
    """What makes a path unfit to read as a state file, worded to follow ``cannot read X:``."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # opening a FIFO without it waits for a writer
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _check_kind(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise NotAFile(f"it is {kind}, not a regular file")
    if st.st_size > limit:
        raise NotAFile(f"it is {st.st_size:,} bytes, over the limit of {_size(limit)}")


def _size(limit: int) -> str:
    return f"{limit >> 30} GiB" if limit >= 1 << 30 else f"{limit:,} bytes"


def check_file(path: Path, limit: int = MAX_FILE_BYTES) -> bool:
    """Whether ``path`` exists; NotAFile if it is not a regular file of at most ``limit``
    bytes. Only ``stat``: a FIFO or a device is never opened. Other OSErrors propagate."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    _check_kind(st, limit)
    return True


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file ``path`` (None if there is none), without ever blocking;
    NotAFile for anything else or for more than ``limit`` bytes; OSError as raised."""
    if not check_file(path, limit):
        return None
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as handle:
        # Checked again on what was opened: the path may have been swapped since the stat.
        st = os.fstat(fd)
        _check_kind(st, limit)
        # Asked for its size and one byte more, not for the limit: a read of 1 GiB sets
        # that much memory aside first, which cost more than reading a 6 MB state.
        data = handle.read(st.st_size + 1)
        if len(data) > st.st_size:  # it grew since the fstat: read on, up to the limit
            data += handle.read(limit + 1 - len(data))
    if len(data) > limit:
        raise NotAFile(f"it grew over the limit of {_size(limit)} while it was read")
    return data


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


# Built once: json.dumps with options builds an encoder per call (two per recorded result).
_LINE_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def dumps_line(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON line, keys sorted."""
    return (_LINE_ENCODER.encode(obj) + "\n").encode("utf-8")


class TooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_DEPTH`: never modelsync's, refused before parsing."""


_ALL_BUT_QUOTES_AND_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_ALL_BUT_QUOTES_COMMAS_OPENERS_AND_DOLLARS = bytes(b for b in range(256) if b not in b'",[{$')
_STEP = tuple(1 if b in b"[{" else -1 for b in range(256))


def _outside_strings(raw: bytes, deleting: bytes) -> bytes:
    """The bytes of the JSON text ``raw`` that lie outside its strings, in order, less those
    in ``deleting`` (a table for ``bytes.translate`` that keeps the quote; one that keeps
    ``$`` counts no ``{`` that follows one)."""
    # Bytes will do: UTF-8 never uses an ASCII byte inside a multi-byte character. Escapes
    # go first (left to right, as JSON reads them), so every quote left opens or closes a
    # string; then only quotes and the bytes asked for are kept. When every quote then sits
    # next to its partner, no string holds a byte asked for: drop the quotes. Otherwise two
    # quotes in a row change no byte's side, so they go first, then the strings' insides.
    # A JSON string cut short at the end (a torn journal line) is ignored.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = raw.translate(None, deleting)
    if b"$" in kept:
        # A "$" is always inside a string, and so is a "{" that comes next among the bytes
        # kept (the string's closing quote is kept): a state keeps its URLs as written,
        # "${TOKEN}" and all. Those go, so that such strings need not be cut out below.
        kept = kept.replace(b"${", b"").translate(None, b"$")
    if kept.count(b'""') * 2 == kept.count(b'"'):
        return kept.translate(None, b'"')
    kept = kept.replace(b'""', b"")
    return b"".join(kept.split(b'"')[0::2])


def json_depth(raw: bytes) -> int:
    """How deep the containers of the JSON text ``raw`` nest, measured without recursion and
    without parsing; a JSON string cut short at the end (a torn journal line) is ignored."""
    outside = _outside_strings(raw, _ALL_BUT_QUOTES_AND_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, outside)), default=0)


class Shape(NamedTuple):
    """The containers of a JSON document: how many, and how many commas separate members."""

    commas: int
    objects: int
    arrays: int


def json_shape(raw: bytes) -> Shape:
    """The :class:`Shape` of the valid JSON text ``raw``, counted without parsing it.

    An object or array of N members (every key counted as often as it is written) has N - 1
    commas, so a parser that keeps the last of duplicate keys sees fewer than the text holds.
    """
    outside = _outside_strings(raw, _ALL_BUT_QUOTES_COMMAS_OPENERS_AND_DOLLARS)
    return Shape(outside.count(b","), outside.count(b"{"), outside.count(b"["))


def quick_loads(raw: bytes) -> Any:
    """Parse JSON with the C parser alone: what :func:`loads` refuses, but for duplicate keys
    (kept the last, silently) and nesting (RecursionError past Python's limit). Callers
    prove both with :func:`json_shape`, or read with :func:`loads`; ValueError otherwise."""
    return json.loads(
        raw.decode("utf-8-sig"), parse_constant=_no_constant, parse_float=_finite_float
    )


def loads(raw: bytes) -> Any:
    """Parse strict JSON: UTF-8, no duplicate keys, no NaN/Infinity or numbers beyond them,
    at most :data:`MAX_DEPTH` deep (:class:`TooDeep`); ValueError otherwise."""
    if json_depth(raw) > MAX_DEPTH:
        raise TooDeep(f"nested more than {MAX_DEPTH} levels deep")
    text = raw.decode("utf-8-sig")
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
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


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        # 1e999 would read as infinity, which no JSON writer (nor the next commit) accepts.
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _bounded_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python's limit on digits; its message names a Python setting
        raise ValueError(f"a number of {len(text):,} digits is too large") from None


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


_MAX_INFO_BYTES = 1 << 16  # a lock-info line is about 200 bytes


def make_lock(path: Path) -> filelock.BaseFileLock:
    """An OS lock (flock) on ``path``, never a soft lock that would outlive its process."""
    import filelock  # only a writer locks: plan and state list never import it

    # No silent fallback to a soft (marker file) lock where flock is missing: a soft lock
    # outlives a killed process, which is the stale lock DESIGN §2 rules out. Asked only of
    # filelock releases that know the option: passing it to one that does not leaves a
    # half-built lock whose __del__ prints a traceback (it broke --log-format json).
    options: dict[str, Any] = {"mode": FILE_MODE, "thread_local": False}
    if "fallback_to_soft" in inspect.signature(filelock.FileLock.__init__).parameters:
        options["fallback_to_soft"] = False
    return filelock.FileLock(str(path), **options)


def lock_info(command: str) -> bytes:
    """The lock-info line of this process: pid, user@host, the command (redacted), since."""
    info = {
        "pid": os.getpid(),
        "user": _user(),
        "host": _hostname(),
        "command": redact(command),
        "started_at": utc_now(),
    }
    return dumps_line(info)


def describe_holder(info_path: Path) -> str:
    """Name the lock's holder from its lock-info file; ``another process`` if unknown."""
    try:
        raw = read_file(info_path, _MAX_INFO_BYTES)
        info = loads(raw) if raw is not None else None
    except (OSError, NotAFile, ValueError):
        return "another process"
    if not isinstance(info, dict):
        return "another process"
    pid, user, host = info.get("pid"), info.get("user"), info.get("host")
    command, started = info.get("command"), info.get("started_at")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "another process"
    if host == _hostname() and not _pid_alive(pid):
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


def _hostname() -> str:
    import socket  # only to name a lock's holder

    return socket.gethostname()
