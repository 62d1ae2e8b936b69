"""End to end: the real ``modelsync`` command, as a child process, over real HTTP on 127.0.0.1.

The sandbox runs in this process (``Sandbox(SandboxConfig(port=0, ...))``) so a test can
read what it holds (``models()``), its counters (``stats()``) and its request log, and so it
outlives an apply that is killed. Only the ``modelsync sandbox`` test runs it as a command.
Every child gets a ``--deadline`` and a subprocess timeout; run with ``pytest -s`` to see
what each scenario observed.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from modelsync.defaults import SANDBOX_ENDPOINT
from modelsync.manifest import load_manifest
from modelsync.records import State
from modelsync.sandbox import Sandbox, SandboxConfig
from modelsync.store.file import read_state
from tests.helpers import numbered, write_models_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

KEY = "e2e-sandbox-key-7f3a9c"
# How long any one child may run before the test gives up on it (a hang is a failure).
CHILD_TIMEOUT = 90.0


# --------------------------------------------------------------------------- helpers


def write_manifest(path: Path, count: int, prefix: str = "model") -> list[str]:
    """A manifest of ``count`` safetensors models with direct https links; their ids."""
    return write_models_manifest(path, numbered(count, prefix))


def child_env(api_key: str | None = KEY) -> dict[str, str]:
    """The environment of a child: ours (conftest removed MODELSYNC_*), plus the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if api_key is not None:
        env["MODELSYNC_API_KEY"] = api_key
    return env


def modelsync_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelsync", *args]


def run_modelsync(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = CHILD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``modelsync ARGS`` to its end, output captured."""
    return subprocess.run(
        modelsync_argv(*args),
        cwd=cwd,
        env=child_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def apply_args(manifest: Path, sandbox: Sandbox, state: Path, *extra: str) -> list[str]:
    return [
        "apply",
        str(manifest),
        "--endpoint",
        sandbox.load_model_url,
        "--state",
        str(state),
        "--deadline",
        "60",
        *extra,
    ]


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    """A child's exit code and output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def load_requests_by_model(log: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The sandbox's load_model log entries per model_id, in the order received."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in log:
        if entry["path"] == "/api/v3/load_model" and entry["model_id"]:
            by_model[entry["model_id"]].append(entry)
    return by_model


def assert_state_agrees(state: State, held: dict[str, dict[str, Any]]) -> None:
    """Every model the state calls submitted is on the sandbox; none on it is unknown."""
    submitted = {m for m, r in state.models.items() if r.status == "submitted"}
    assert submitted <= set(held), f"submitted but not on the sandbox: {submitted - set(held)}"
    # A `pending` record is written before each POST: the sandbox cannot hold a model the
    # state never heard of.
    assert set(held) <= set(state.models), f"unknown to the state: {set(held) - set(state.models)}"


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def make(**config: Any) -> Sandbox:
        sandbox = Sandbox(SandboxConfig(port=0, api_key=KEY, **config))
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


# ------------------------------------------------------------------ 1. apply --sandbox


def test_apply_sandbox_example_without_a_key_then_no_changes(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shutil.copy(REPO / "manifests" / "example.yaml", manifests / "example.yaml")
    env = child_env(api_key=None)
    ids = [m.model_id for m in load_manifest(manifests / "example.yaml").models]
    n = len(ids)
    assert "majicmix-realistic" in ids

    first = run_modelsync(
        "apply", "--sandbox", "manifests/example.yaml", "--deadline", "30", cwd=tmp_path, env=env
    )
    assert first.returncode == 0, shown(first)
    for model_id in ids:
        assert f"  + {model_id}" in first.stdout, shown(first)
        assert f"{model_id}: submitted (create, 1 attempt, " in first.stderr, shown(first)
    width = max(map(len, ids))
    assert f"  + {'majicmix-realistic'.ljust(width)}  create (force_load: no)\n" in first.stdout
    assert f"Plan: {n} to create, 0 to update, 0 to retry, 0 unchanged, 0 orphaned." in first.stdout
    assert first.stdout.rstrip().endswith(
        f"Apply: {n} submitted, 0 failed, 0 skipped, 0 unchanged."
    )
    sandbox_state = manifests / ".modelsync" / "example.sandbox.state.json"
    assert "Sandbox: http://127.0.0.1:" in first.stderr
    assert f"(state {Path('manifests/.modelsync/example.sandbox.state.json')})" in first.stderr
    # The sandbox has its own state; the real one is never written.
    assert sandbox_state.is_file()
    assert not (manifests / ".modelsync" / "example.state.json").exists()
    state = read_state(sandbox_state, SANDBOX_ENDPOINT)
    assert sorted(state.models) == sorted(ids)
    assert {r.status for r in state.models.values()} == {"submitted"}

    second = run_modelsync(
        "apply", "--sandbox", "manifests/example.yaml", "--deadline", "30", cwd=tmp_path, env=env
    )
    assert second.returncode == 0, shown(second)
    assert "No changes: the account holds what the manifest declares." in second.stdout
    assert (
        f"Plan: 0 to create, 0 to update, 0 to retry, {n} unchanged, 0 orphaned." in second.stdout
    )
    assert f"Apply: 0 submitted, 0 failed, 0 skipped, {n} unchanged." in second.stdout
    assert "submitted (" not in second.stderr, shown(second)
    assert read_state(sandbox_state, SANDBOX_ENDPOINT).models == state.models


# ------------------------------------------------------- 2. faults: 5xx and resets


def test_apply_through_5xx_and_resets_loads_every_model(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    request_log = tmp_path / "requests.jsonl"
    sandbox = make_sandbox(fail_rate=0.2, reset_rate=0.05, seed=20261125, request_log=request_log)
    manifest, state_path = tmp_path / "big.yaml", tmp_path / "big.state.json"
    ids = write_manifest(manifest, 200)
    report_path = tmp_path / "report.json"
    args = apply_args(manifest, sandbox, state_path, "--parallelism", "8", "--report")

    runs = [run_modelsync(*args, str(report_path), cwd=tmp_path)]
    reports = [json.loads(report_path.read_text(encoding="utf-8"))]
    if runs[0].returncode == 1:
        # Some entries may have spent all 5 attempts on faults: the next apply retries them.
        failed = [r for r in reports[0]["results"] if r["outcome"] != "submitted"]
        assert failed, shown(runs[0])
        # Only for running out of attempts, never for "already exists".
        for result in failed:
            assert result["outcome"] == "failed", result
            assert result["message"].startswith("gave up after 5 attempts: "), result
        runs.append(run_modelsync(*args, str(report_path), cwd=tmp_path))
        reports.append(json.loads(report_path.read_text(encoding="utf-8")))
    assert runs[-1].returncode == 0, shown(runs[-1])

    held = sandbox.models()
    stats = sandbox.stats()
    state = read_state(state_path, sandbox.load_model_url)
    assert sorted(held) == ids
    assert sorted(state.models) == ids
    assert {r.status for r in state.models.values()} == {"submitted"}
    assert_state_agrees(state, held)
    assert stats["resets"] > 0 and stats["faults_5xx"] > 0, stats

    by_model = load_requests_by_model(read_log(request_log))
    reset_models = sorted(m for m, es in by_model.items() if any(e["status"] is None for e in es))
    loaded_twice = sorted(m for m, h in held.items() if h["loads"] > 1)
    for model_id in ids:
        entries = by_model[model_id]
        # A create goes out with force_load no (DESIGN §4)...
        assert entries[0]["body"]["force_load"] == "no", entries
        # ...and once an attempt may have loaded it (reset, 5xx, garbage) it goes on as a
        # retry, force_load yes, so the sandbox reloads it instead of refusing it.
        for before, after in itertools.pairwise(entries):
            if before["status"] is None or before["status"] >= 500:
                assert after["body"]["force_load"] == "yes", entries
        # Every request the sandbox recorded (answered or reset) is one load.
        recorded = sum(e["outcome"] in ("accepted", "reset") for e in entries)
        assert held[model_id]["loads"] == recorded, (model_id, entries)
        # The state keeps the body as last sent.
        assert state.models[model_id].request["force_load"] == entries[-1]["body"]["force_load"]
    assert stats["already_exists"] == 0
    # Only a reset loads a model without telling the client: those are the models loaded
    # more than once, each after its lost answer.
    assert set(loaded_twice) <= set(reset_models)
    first_report = {r["model_id"]: r for r in reports[0]["results"]}
    resubmitted = sorted(m for m, es in by_model.items() if len(es) > 1)
    print(
        f"\n[faults] {len(runs)} apply run(s), exit codes {[r.returncode for r in runs]}; "
        f"sandbox: {stats['load_model']} load_model requests, {stats['faults_5xx']} 5xx, "
        f"{stats['resets']} resets, {stats['already_exists']} refused as existing\n"
        f"[faults] {len(resubmitted)} models were sent more than once: "
        f"{len(resubmitted) - len(reset_models)} after a 5xx only (not recorded by the sandbox, "
        f"so loaded once), {len(reset_models)} after a reset (loaded by the sandbox, answer "
        f"dropped, client retried with force_load yes): {len(loaded_twice)} of them loaded "
        f"twice or more ({', '.join(loaded_twice)})\n"
        f"[faults] first run: {reports[0]['summary']}; most attempts for one model: "
        f"{max(r['attempts'] for r in first_report.values())}"
    )


# ------------------------------------------------------------------------ 3. 429s


def test_apply_backs_off_on_429_instead_of_failing_entries(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox(max_queued=5, latency_ms=100)
    manifest, state_path = tmp_path / "big.yaml", tmp_path / "big.state.json"
    ids = write_manifest(manifest, 200)
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    proc = run_modelsync(
        *apply_args(manifest, sandbox, state_path, "--parallelism", "16", "--report"),
        str(report_path),
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, shown(proc)

    stats = sandbox.stats()
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["summary"] == {
        "submitted": 200,
        "failed": 0,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 0,
    }
    assert stats["rejected_429"] > 0, stats
    # The gate learns the limit: the first burst (at most 16 - 5 = 11 refused) and a few
    # probes of the refused level, not a 429 every time the workers asleep in a backoff
    # wake up (what a gate that regrows on idle successes does: 45-90 per run here).
    assert stats["rejected_429"] <= 30, stats
    assert sorted(sandbox.models()) == ids
    state = read_state(state_path, sandbox.load_model_url)
    assert {r.status for r in state.models.values()} == {"submitted"}
    assert_state_agrees(state, sandbox.models())
    # Every 429 is answered at once and not recorded, so each one cost one extra request.
    assert stats["load_model"] == 200 + stats["rejected_429"]
    retried = [r for r in report["results"] if r["attempts"] > 1]
    assert sum(r["attempts"] - 1 for r in retried) == stats["rejected_429"]
    print(
        f"\n[429] {stats['rejected_429']} answers 429 out of {stats['load_model']} requests; "
        f"{len(retried)} models needed more than one attempt "
        f"(at most {max(r['attempts'] for r in report['results'])}); {elapsed:.1f} s for 200 "
        "models at 100 ms with 5 queued (ideal 4 s)"
    )


# ----------------------------------------------------------------- 4. kill -9 halfway


def test_apply_killed_halfway_then_run_again_loses_nothing(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    request_log = tmp_path / "requests.jsonl"
    sandbox = make_sandbox(latency_ms=100, request_log=request_log)
    manifest, state_path = tmp_path / "big.yaml", tmp_path / "big.state.json"
    ids = write_manifest(manifest, 200)
    args = apply_args(manifest, sandbox, state_path, "--parallelism", "4")

    child = subprocess.Popen(
        modelsync_argv(*args),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # About 1 s into the run (4 requests in flight, 100 ms each): a fifth of the way.
        wait_for(lambda: sandbox.stats()["accepted"] >= 40, 30, "40 models accepted")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Requests in flight at the kill finish on the sandbox (their answers go nowhere).
    wait_for(lambda: sandbox.stats()["in_flight"] == 0, 10, "the sandbox to go idle")

    state = read_state(state_path, sandbox.load_model_url)  # readable: never half-written
    held = sandbox.models()
    assert 40 <= len(held) < len(ids)
    assert_state_agrees(state, held)
    pending = sorted(m for m, r in state.models.items() if r.status == "pending")
    assert {r.status for r in state.models.values()} <= {"submitted", "pending"}
    assert len(pending) <= 4  # at most the requests in flight
    reached = sorted(m for m in pending if m in held)

    again = run_modelsync(*args, cwd=tmp_path)
    assert again.returncode == 0, shown(again)
    submitted_before = len(state.models) - len(pending)
    assert (
        f"Plan: {len(ids) - len(state.models)} to create, 0 to update, {len(pending)} to retry, "
        f"{submitted_before} unchanged, 0 orphaned."
    ) in again.stdout, shown(again)
    for model_id in pending:
        assert f"  ↻ {model_id}" in again.stdout, shown(again)

    held = sandbox.models()
    final = read_state(state_path, sandbox.load_model_url)
    assert sorted(held) == ids
    assert sorted(final.models) == ids
    assert {r.status for r in final.models.values()} == {"submitted"}
    assert_state_agrees(final, held)
    by_model = load_requests_by_model(read_log(request_log))
    for model_id in pending:
        # A pending model is retried with force_load yes: reloaded if it had arrived.
        assert by_model[model_id][-1]["body"]["force_load"] == "yes"
        assert held[model_id]["loads"] == (2 if model_id in reached else 1)
    # Nothing recorded as submitted was sent again.
    assert all(len(by_model[m]) == 1 for m in ids if m not in pending)
    assert sandbox.stats()["already_exists"] == 0
    print(
        f"\n[kill -9] killed with {len(state.models)} models in the state: {len(pending)} "
        f"pending ({len(reached)} of them had reached the sandbox: {', '.join(reached)}); "
        f"the second run retried them with force_load yes and created the other "
        f"{len(ids) - len(state.models)}"
    )


# ------------------------------------------------------------------ 5. one run at a time


def test_second_apply_on_a_locked_state_exits_4_naming_the_first(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox(latency_ms=100)
    manifest, state_path = tmp_path / "big.yaml", tmp_path / "big.state.json"
    write_manifest(manifest, 100)
    args = apply_args(manifest, sandbox, state_path, "--parallelism", "4")
    lock_info = state_path.with_name(state_path.name + ".lock.info")

    first = subprocess.Popen(
        modelsync_argv(*args),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first holds the lock once it sends (about 2.5 s of work at 100 ms x 4).
        wait_for(lambda: sandbox.stats()["requests"] > 0, 30, "the first apply to send")
        assert lock_info.is_file()
        second = run_modelsync(*args, cwd=tmp_path, timeout=30)
        assert first.poll() is None, "the first apply ended before the second was refused"
        out, err = first.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()

    assert second.returncode == 4, shown(second)
    assert f"is locked by pid {first.pid} (" in second.stderr, shown(second)
    assert f'"modelsync apply {manifest} --endpoint' in second.stderr, shown(second)
    assert "wait for it, or pass --lock-timeout SECONDS" in second.stderr
    assert second.stdout == ""  # refused before planning
    assert first.returncode == 0, f"exit {first.returncode}\n{out}\n{err}"
    assert "Apply: 100 submitted, 0 failed, 0 skipped, 0 unchanged." in out
    assert sandbox.stats()["load_model"] == 100  # the second one sent nothing
    assert not lock_info.exists()


# ------------------------------------------------------------- 6. modelsync sandbox


def test_sandbox_command_serves_logs_masked_and_stops_on_sigterm(tmp_path: Path) -> None:
    request_log = tmp_path / "sandbox-requests.jsonl"
    proc = subprocess.Popen(
        modelsync_argv(
            "sandbox", "--port", "0", "--api-key", KEY, "--request-log", str(request_log)
        ),
        cwd=tmp_path,
        env=child_env(api_key=None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr
    assert stderr is not None

    def read_stderr() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        banner = lines.get(timeout=15)
        assert banner.startswith("Sandbox listening on http://127.0.0.1:"), banner
        base = banner.split()[-1]
        assert lines.get(timeout=5) == f"load_model: {base}/api/v3/load_model\n"

        body = {
            "key": KEY,
            "model_id": "e2e-model",
            "url": "https://models.example.com/files/e2e.safetensors",
            "model_format": "safetensors",
            "model_category": "stable_diffusion",
            "model_visibility": "private",
            "model_name": "E2E",
            "force_load": "no",
        }
        answer = requests.post(f"{base}/api/v3/load_model", json=body, timeout=10)
        assert (answer.status_code, answer.json()) == (
            200,
            {"status": "success", "message": "model load started"},
        )
        listing = requests.post(
            f"{base}/api/v4/dreambooth/model_list", json={"key": KEY}, timeout=10
        )
        assert [m["model_id"] for m in listing.json()] == ["e2e-model"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    rest = "".join(lines.queue)
    assert "Traceback" not in rest, rest

    text = request_log.read_text(encoding="utf-8")
    assert KEY not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["path"], e["model_id"], e["status"], e["outcome"]) for e in entries] == [
        ("/api/v3/load_model", "e2e-model", 200, "accepted"),
        ("/api/v4/dreambooth/model_list", None, 200, "listed"),
    ]
    assert entries[0]["body"] == {**body, "key": "***"}
    assert entries[1]["body"] == {"key": "***"}
    assert (request_log.stat().st_mode & 0o777) == 0o600
