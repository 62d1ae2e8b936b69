"""The file state against hostile paths and documents (DESIGN §2, last bullet).

A ``--state`` reached through a symlink is one state with one lock, however it is named; a
FIFO, a device, a folder or a file over 1 GiB is refused at once (exit 4), never read until
it ends; JSON nested deeper than any state, or holding numbers no JSON writer accepts, is
refused (exit 4) with a message, never a RecursionError.

Every wait is bounded: an in-process read of a FIFO runs in a thread that the test unblocks
(by opening the FIFO's other end) if it has not returned in time, and a process gets a
``subprocess`` timeout, so a regression fails these tests instead of hanging them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelsync.errors import ExitCode, StateError, StateLockedError
from modelsync.records import ModelRecord
from modelsync.redact import MAX_JSON_DEPTH, Redactor
from modelsync.store import open_state
from modelsync.store.file import FileBackend, StateStore, read_state
from modelsync.store.fileio import MAX_DEPTH, MAX_FILE_BYTES, describe_holder, json_depth
from tests.helpers import write_models_manifest

ENDPOINT = "http://127.0.0.1:9/api/v3/load_model"  # nothing listens: no test may send
DEEP = b"[" * 100_000 + b"]" * 100_000
REPO = Path(__file__).resolve().parents[1]
# A process start and a refusal take well under a second; the timeout and the memory cap
# only keep a regression (a FIFO waited on, /dev/zero read at GB/s) from hanging the run or
# filling the machine's memory.
PROCESS_TIMEOUT_S = 30
PROCESS_MEMORY_BYTES = 2 << 30
QUICK_S = 1.0


def rec(n: int = 1, status: str = "submitted", **extra: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "fingerprint": f"sha256:{n:064x}",
        "request": {"url": f"org/m{n}", "model_format": "diffusers"},
        "status": status,
        "attempts": 1,
    }
    fields.update(extra)
    return ModelRecord(**fields)


def sib(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def apply(path: Path, records: dict[str, ModelRecord]) -> None:
    with StateStore(path, ENDPOINT) as store:
        for model_id, record in records.items():
            store.record(model_id, record)


def lineage_of(path: Path) -> str:
    lineage = json.loads(path.read_text())["lineage"]
    assert isinstance(lineage, str)
    return lineage


def journal_header(path: Path) -> bytes:
    header = {"op": "begin", "format_version": 1, "lineage": lineage_of(path), "base_serial": 1}
    return json.dumps(header).encode() + b"\n"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state with one result and a backup (two runs), in ``tmp_path/real``."""
    path = tmp_path / "real" / "prod.state.json"
    apply(path, {"a": rec(1)})
    apply(path, {"b": rec(2)})
    return path


def within(seconds: float, call: Callable[[], object], fifo: Path | None = None) -> BaseException:
    """Run ``call`` in a thread; the exception it raised. Fails if it returned, or if it had
    not ended within ``seconds`` (then ``fifo``, which it may be blocked on, is opened for
    writing and closed, so the thread ends and the test does not hang)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    took = time.monotonic() - started
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader waits: this succeeds
            os.close(fd)
        thread.join(10)
        pytest.fail(f"still blocked after {seconds} s")
    assert outcome and outcome[0] is not None, "returned instead of refusing"
    assert took < seconds
    return outcome[0]


# ``python -m modelsync`` under a memory cap set by the child itself.
_CAPPED_MODELSYNC = (
    "import resource, runpy;"
    f" resource.setrlimit(resource.RLIMIT_AS, ({PROCESS_MEMORY_BYTES}, {PROCESS_MEMORY_BYTES}));"
    " runpy.run_module('modelsync', run_name='__main__', alter_sys=True)"
)


def modelsync(*args: str | Path) -> tuple[int, str, float]:
    """``python -m modelsync ARGS`` as a process: exit code, stderr, seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CAPPED_MODELSYNC, *map(str, args)],
        cwd=REPO,
        env={**os.environ, "MODELSYNC_API_KEY": "hostile-test-key-0000"},
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def assert_refused(code: int, err: str, *expected: str) -> None:
    assert code == ExitCode.STATE, err
    assert err.startswith("Error: "), err
    assert "Traceback" not in err and "RecursionError" not in err
    for text in expected:
        assert text in err


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "prod.yaml"
    write_models_manifest(path, ["model-000", "model-001"])
    return path


# --------------------------------------------------------------------------- symlinks


def test_symlinked_state_shares_one_lock_with_its_target(state: Path, tmp_path: Path) -> None:
    link = tmp_path / "elsewhere" / "link.state.json"
    link.parent.mkdir()
    link.symlink_to(os.path.relpath(state, link.parent))
    assert FileBackend(link, ENDPOINT).location == FileBackend(state, ENDPOINT).location
    for holder, other in ((link, state), (state, link)):
        with StateStore(holder, ENDPOINT, command=f"modelsync apply --state {holder}"):
            with pytest.raises(StateLockedError) as info:
                StateStore(other, ENDPOINT).__enter__()
            message = str(info.value)
            assert message.startswith(f"state {state} is locked by pid {os.getpid()} (")
            assert f'"modelsync apply --state {holder}")' in message
            assert FileBackend(other, ENDPOINT).describe_holder().startswith(f"pid {os.getpid()}")
    assert sorted(p.name for p in link.parent.iterdir()) == ["link.state.json"]


def test_write_through_a_symlink_keeps_the_link_and_writes_beside_the_target(
    state: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link.state.json"
    link.symlink_to(state)
    before = state.read_bytes()
    with StateStore(link, ENDPOINT) as store:
        store.record("c", rec(3))
        assert sib(state, ".journal").exists()
        assert store.state.location == str(state)
    assert link.is_symlink() and link.resolve() == state
    assert sorted(json.loads(state.read_text())["models"]) == ["a", "b", "c"]
    assert sib(state, ".backup").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.state.json", "real"]
    assert sorted(read_state(link, ENDPOINT).models) == ["a", "b", "c"]


def test_first_run_through_a_dangling_symlink_creates_the_target(tmp_path: Path) -> None:
    target = tmp_path / "states" / "prod.state.json"
    link = tmp_path / "link.state.json"
    link.symlink_to(target)
    apply(link, {"a": rec(1)})
    assert link.is_symlink()
    assert list(json.loads(target.read_text())["models"]) == ["a"]


def test_symlinked_folder_shares_one_lock_with_the_real_folder(tmp_path: Path) -> None:
    # ``current`` is a folder link; ``prod.state.json`` a file link through it, relative.
    versions = tmp_path / "states" / "v2"
    versions.mkdir(parents=True)
    (tmp_path / "states" / "current").symlink_to("v2")
    real = versions / "prod.state.json"
    through_folder = tmp_path / "states" / "current" / "prod.state.json"
    link = tmp_path / "prod.state.json"
    link.symlink_to("states/current/prod.state.json")
    apply(through_folder, {"a": rec(1)})
    assert real.is_file() and not real.is_symlink()
    names = (real, through_folder, link, tmp_path / "states" / "current" / ".." / "v2" / real.name)
    for holder in names:
        with StateStore(holder, ENDPOINT, command="holder"):
            for other in names:
                with pytest.raises(
                    StateLockedError, match=f'^state {real} is locked by pid .*"holder"'
                ):
                    StateStore(other, ENDPOINT).__enter__()
    apply(link, {"b": rec(2)})
    assert link.is_symlink()
    assert sorted(p.name for p in versions.iterdir()) == [
        "prod.state.json",
        "prod.state.json.backup",
        "prod.state.json.lock",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.state.json", "states"]


def test_open_state_resolves_a_symlinked_path(state: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.state.json"
    link.symlink_to(state)
    backend = open_state(str(link), manifest_path=tmp_path / "prod.yaml", endpoint=ENDPOINT)
    assert backend.location == str(state)
    assert backend.read().location == str(state)


# --------------------------------------------------------------------------- not a file


def test_fifo_state_is_refused_at_once_and_takes_no_lock(tmp_path: Path) -> None:
    fifo = tmp_path / "prod.state.json"
    os.mkfifo(fifo)
    for attempt in (lambda: read_state(fifo, ENDPOINT), StateStore(fifo, ENDPOINT).__enter__):
        error = within(QUICK_S, attempt, fifo)
        assert isinstance(error, StateError) and error.exit_code == ExitCode.STATE
        assert str(error) == (
            f"cannot read state {fifo}: it is a FIFO (named pipe), not a regular file; a state"
            " is a regular file of JSON that modelsync wrote (a symlink to one is fine): pass"
            f" --state with the path of the state file, or move {fifo} away"
        )
    assert [p.name for p in tmp_path.iterdir()] == ["prod.state.json"]


@pytest.mark.parametrize("suffix", [".journal", ".backup"])
def test_fifo_journal_or_backup_is_refused_at_once(state: Path, suffix: str) -> None:
    fifo = sib(state, suffix)
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    for attempt in (lambda: read_state(state, ENDPOINT), StateStore(state, ENDPOINT).__enter__):
        error = within(QUICK_S, attempt, fifo)
        assert isinstance(error, StateError)
        message = str(error)
        assert f"cannot read {'the journal ' if suffix == '.journal' else ''}{fifo}" in message
        assert "it is a FIFO (named pipe), not a regular file" in message
        assert f"move {fifo} away" in message
    fifo.unlink()
    with StateStore(state, ENDPOINT):  # the refused writer let the lock go
        pass


def test_fifo_lock_info_names_another_process_at_once(state: Path) -> None:
    info = sib(state, ".lock.info")
    os.mkfifo(info)
    holder: list[str] = []

    def describe() -> None:
        holder.append(describe_holder(info))
        raise StopIteration  # within() wants an exception: the call ended

    within(QUICK_S, describe, info)
    assert holder == ["another process"]


def test_lock_info_nested_deep_names_another_process(state: Path) -> None:
    sib(state, ".lock.info").write_bytes(DEEP)
    assert FileBackend(state, ENDPOINT).describe_holder() == "another process"


def test_state_over_1_gib_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "prod.state.json"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk and no time
    started = time.monotonic()
    for attempt in (lambda: read_state(big, ENDPOINT), StateStore(big, ENDPOINT).__enter__):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value).startswith(
            f"cannot read state {big}: it is 1,073,741,825 bytes, over the limit of 1 GiB;"
        )
    assert time.monotonic() - started < QUICK_S
    assert [p.name for p in tmp_path.iterdir()] == ["prod.state.json"]


@pytest.mark.parametrize("suffix", [".journal", ".backup"])
def test_journal_or_backup_over_1_gib_is_refused(state: Path, suffix: str) -> None:
    with open(sib(state, suffix), "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(StateError, match="it is 1,073,741,825 bytes, over the limit of 1 GiB"):
        read_state(state, ENDPOINT)
    assert time.monotonic() - started < QUICK_S


def test_device_through_a_symlink_is_refused_naming_the_link(tmp_path: Path) -> None:
    link = tmp_path / "prod.state.json"
    link.symlink_to("/dev/null")  # empty, so the old code read it as "empty", never hanging
    for attempt in (lambda: read_state(link, ENDPOINT), StateStore(link, ENDPOINT).__enter__):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value) == (
            f"cannot read state {link} (which resolves to /dev/null): it is a character device,"
            " not a regular file; a state is a regular file of JSON that modelsync wrote (a"
            f" symlink to one is fine): pass --state with the path of the state file, or move"
            f" {link} away"
        )
    assert [p.name for p in tmp_path.iterdir()] == ["prod.state.json"]
    assert not Path("/dev/null.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_fifo_and_dev_zero_state_processes_exit_4_at_once(
    tmp_path: Path, manifest: Path, command: str
) -> None:
    fifo = tmp_path / "fifo.state.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.state.json"
    zero.symlink_to("/dev/zero")
    dev_lock_before = Path("/dev/zero.lock").exists()
    for path, kind in ((fifo, "a FIFO (named pipe)"), (zero, "a character device")):
        code, err, took = modelsync(command, manifest, "--state", path, "--endpoint", ENDPOINT)
        assert_refused(code, err, f"cannot read state {path}", f"it is {kind}, not a regular file")
        assert took < 15, f"{path} took {took:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo.state.json",
        "prod.yaml",
        "zero.state.json",
    ]
    assert Path("/dev/zero.lock").exists() == dev_lock_before


# --------------------------------------------------------------------------- hostile JSON


def test_state_nested_100000_deep_is_refused(state: Path) -> None:
    state.write_bytes(DEEP)
    for attempt in (lambda: read_state(state, ENDPOINT), StateStore(state, ENDPOINT).__enter__):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value).startswith(
            f"state {state} is nested more than 64 levels deep, which no state modelsync"
            " writes is; it is damaged or not a state file; modelsync will not read it as"
            " 'nothing submitted'"
        )


def _nested(levels: int) -> dict[str, Any]:
    """A response object ``levels`` deep (itself included)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


def test_depth_limit_is_64_levels(state: Path) -> None:
    doc = json.loads(state.read_text())
    # The state, models, the record: 3 levels above the response.
    for levels, accepted in ((MAX_DEPTH - 3, True), (MAX_DEPTH - 2, False)):
        doc["models"]["a"]["response"] = _nested(levels)
        raw = json.dumps(doc).encode()
        assert json_depth(raw) == levels + 3
        state.write_bytes(raw)
        sib(state, ".backup").unlink(missing_ok=True)
        if accepted:
            assert read_state(state, ENDPOINT).models["a"].response == _nested(levels)
        else:
            with pytest.raises(StateError, match="nested more than 64 levels deep"):
                read_state(state, ENDPOINT)


def test_a_server_answer_cut_by_the_redactor_still_fits_the_state(tmp_path: Path) -> None:
    path = tmp_path / "prod.state.json"
    answer = Redactor().json(_nested(10_000))  # as apply keeps a server's answer
    assert json_depth(json.dumps(answer).encode()) == MAX_JSON_DEPTH
    apply(path, {"a": rec(1, response=answer)})
    apply(path, {"b": rec(2)})
    assert read_state(path, ENDPOINT).models["a"].response == answer


def test_record_too_deep_to_read_back_never_reaches_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "prod.state.json"
    with StateStore(path, ENDPOINT) as store:
        store.record("a", rec(1))
        with pytest.raises(ValueError, match="'b' is nested too deep to be read back"):
            store.record("b", rec(2, response=_nested(MAX_DEPTH)))
        assert sorted(store.state.models) == ["a"]
    assert sorted(read_state(path, ENDPOINT).models) == ["a"]


@pytest.mark.parametrize("last", [False, True])
def test_journal_line_nested_100000_deep_is_damage_even_as_the_last_line(
    state: Path, last: bool
) -> None:
    tail = b"" if last else json.dumps({"op": "del", "model_id": "a"}).encode() + b"\n"
    sib(state, ".journal").write_bytes(journal_header(state) + DEEP + b"\n" + tail)
    for attempt in (lambda: read_state(state, ENDPOINT), StateStore(state, ENDPOINT).__enter__):
        with pytest.raises(StateError) as info:
            attempt()
        assert str(info.value).startswith(
            f"journal {sib(state, '.journal')} line 2 is damaged (nested more than 64 levels"
            " deep); it holds results of a run"
        )


def test_torn_last_line_with_brackets_in_a_string_is_still_torn(state: Path) -> None:
    line = json.dumps(
        {"op": "put", "model_id": "c", "record": rec(3, last_error="[{" * 100).to_json()}
    )
    torn = line.encode()[: line.index("[{") + 150]
    sib(state, ".journal").write_bytes(journal_header(state) + torn)
    assert sorted(read_state(state, ENDPOINT).models) == ["a", "b"]


def test_backup_nested_deep_is_only_a_warning(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sib(state, ".backup").write_bytes(DEEP)
    with caplog.at_level(logging.WARNING):
        assert sorted(read_state(state, ENDPOINT).models) == ["a", "b"]
    assert f"state backup {sib(state, '.backup')} is unreadable" in caplog.text


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (b"1e999", "the number 1e999 is too large"),
        (b"-1E400", "the number -1E400 is too large"),
        (b"1" + b"0" * 5000, "a number of 5,001 digits is too large"),
    ],
)
def test_numbers_beyond_json_are_refused(state: Path, number: bytes, expected: str) -> None:
    raw = state.read_bytes().replace(b'"attempts":1', b'"attempts":' + number, 1)
    state.write_bytes(raw)
    with pytest.raises(StateError) as info:
        read_state(state, ENDPOINT)
    assert f"is not valid JSON ({expected})" in str(info.value)
    assert "sys.set_int_max_str_digits" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_deep_state_and_journal_processes_exit_4_with_a_message(
    tmp_path: Path, manifest: Path, command: str
) -> None:
    deep_state = tmp_path / "deep" / "prod.state.json"
    deep_state.parent.mkdir()
    deep_state.write_bytes(DEEP)
    code, err, _ = modelsync(command, manifest, "--state", deep_state, "--endpoint", ENDPOINT)
    assert_refused(code, err, f"state {deep_state} is nested more than 64 levels deep")

    deep_journal = tmp_path / "journal" / "prod.state.json"
    apply(deep_journal, {"a": rec(1)})
    sib(deep_journal, ".journal").write_bytes(journal_header(deep_journal) + DEEP + b"\n")
    code, err, _ = modelsync(command, manifest, "--state", deep_journal, "--endpoint", ENDPOINT)
    assert_refused(code, err, "line 2 is damaged (nested more than 64 levels deep)")
