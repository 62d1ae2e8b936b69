"""Tests for the apply runner (modelsync.runner, .controls) and ``modelsync apply`` end to end.

The runner is driven directly with a ModelsLab client whose sleep only records;
the command goes through ``modelsync.cli.main([...])`` with requests-mock as the API
and ``StopFlag.sleep`` (the client's backoff sleep in a CLI run) replaced by a recorder,
so no test waits for a retry. The signal tests run the real command in a subprocess
against a real sandbox over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_mock as rm

import modelsync
from modelsync.controls import (
    DOWN_STREAK,
    PROBE_MODELS,
    PROBES_EACH,
    AdaptiveGate,
    HealthWatch,
    StopFlag,
    build_controls,
)
from modelsync.defaults import MAX_RATE_LIMITED
from modelsync.errors import ExitCode
from modelsync.manifest import load_manifest
from modelsync.plan import make_plan
from modelsync.runner import ApplyOptions, Report, run_apply
from modelsync.sandbox import Sandbox, SandboxConfig
from modelsync.store import open_state
from modelsync.store.file import read_state
from tests.helpers import ENDPOINT, Cli, EdgeRandom, FakeClock, make_client

OTHER_HOST = "https://elsewhere.test/api/v3/load_model"
KEY = "test-key-5f0c2a9d81b4"
OK = {"status": "success", "message": "model load started"}
REPORT_KEYS = {"format_version", "summary", "results"}
RESULT_KEYS = {
    "model_id",
    "action",
    "outcome",
    "attempts",
    "http_status",
    "message",
    "duration_s",
}


# --------------------------------------------------------------------------- helpers


def model(i: int, **extra: Any) -> dict[str, Any]:
    """A valid safetensors model entry."""
    entry: dict[str, Any] = {
        "model_id": f"model-{i:02d}",
        "url": f"https://huggingface.co/org/m{i}/resolve/main/m{i}.safetensors",
        "model_format": "safetensors",
        "model_category": "stable_diffusion",
    }
    entry.update(extra)
    return entry


def write_manifest(
    path: Path, models: Sequence[dict[str, Any]], *, defaults: dict[str, Any] | None = None
) -> Path:
    """Write a manifest (JSON is YAML) and return its path."""
    document: dict[str, Any] = {"version": 1, "target": {"endpoint": ENDPOINT}}
    if defaults:
        document["defaults"] = defaults
    document["models"] = list(models)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def ids(n: int) -> list[str]:
    return [f"model-{i:02d}" for i in range(n)]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits in a CLI run: recorded, never slept."""
    recorded: list[float] = []

    def fake_sleep(self: StopFlag, seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(StopFlag, "sleep", fake_sleep)
    return recorded


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)
    return KEY


@pytest.fixture
def manifest5(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(5)])


def state_path_of(manifest: Path) -> Path:
    return manifest.parent / ".modelsync" / f"{manifest.stem}.state.json"


def snapshot(manifest: Path) -> dict[str, Any]:
    """The state snapshot as written on disk (the run folded its journal into it)."""
    path = state_path_of(manifest)
    assert not path.with_name(path.name + ".journal").exists()
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def bodies(mock: rm.Mocker, url: str = ENDPOINT) -> list[dict[str, Any]]:
    return [r.json() for r in mock.request_history if r.url == url]


def sent_ids(mock: rm.Mocker) -> list[str]:
    return [b["model_id"] for b in bodies(mock)]


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["model_id"]: r for r in report["results"]}


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {r["model_id"]: r["outcome"] for r in report["results"]}


# --------------------------------------------------------------------------- the runner


def run_runner(
    tmp_path: Path,
    models: Sequence[dict[str, Any]],
    *,
    parallelism: int = 1,
    max_attempts: int = 5,
    max_retry_after: float = 300.0,
    deadline_s: float | None = None,
    clock: FakeClock | None = None,
) -> tuple[Report, FakeClock]:
    """Plan and apply ``models`` through run_apply with a fake sleep (and clock)."""
    clock = clock or FakeClock()
    manifest = load_manifest(write_manifest(tmp_path / "prod.yaml", models), {})
    controls = build_controls(parallelism)
    backend = open_state(str(tmp_path / "prod.state.json"), manifest_path="", endpoint=ENDPOINT)
    with backend.open_writer(lock_timeout=0, command="test") as writer:
        plan = make_plan(manifest, writer.state)
        with make_client(
            ENDPOINT,
            KEY,
            max_attempts=max_attempts,
            max_retry_after=max_retry_after,
            sleep=clock.sleep,
            clock=clock,
            gate=controls.watched,
            rng=EdgeRandom(),  # server-named waits exactly as named
        ) as client:
            report = run_apply(
                plan,
                writer,
                client,
                options=ApplyOptions(parallelism=parallelism, deadline_s=deadline_s),
                controls=controls,
                clock=clock,
            )
    return report, clock


def test_runner_retries_a_500_then_submits(tmp_path: Path, requests_mock: rm.Mocker) -> None:
    requests_mock.post(ENDPOINT, [{"status_code": 500, "json": {}}, {"json": OK}])
    report, clock = run_runner(tmp_path, [model(0)])
    assert report.exit_code == ExitCode.OK
    (result,) = report.results
    assert (result.outcome, result.attempts, result.http_status) == ("submitted", 2, 200)
    assert result.message == "model load started"
    assert requests_mock.call_count == 2
    assert len(clock.sleeps) == 1 and 0.0 <= clock.sleeps[0] <= 1.0  # full jitter, base 1 s
    record = read_state(tmp_path / "prod.state.json", ENDPOINT).models["model-00"]
    assert (record.status, record.attempts, record.last_error) == ("submitted", 2, None)


def test_runner_honours_retry_after_header(tmp_path: Path, requests_mock: rm.Mocker) -> None:
    requests_mock.post(
        ENDPOINT,
        [{"status_code": 503, "headers": {"Retry-After": "2"}, "json": {}}, {"json": OK}],
    )
    report, clock = run_runner(tmp_path, [model(0)])
    assert clock.sleeps == [2.0]
    assert [(r.outcome, r.attempts) for r in report.results] == [("submitted", 2)]
    assert report.exit_code == ExitCode.OK


def test_runner_retry_after_over_the_cap_fails_only_that_entry(
    tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    def answer(request: Any, context: Any) -> dict[str, Any]:
        if request.json()["model_id"] == "model-01":
            context.status_code = 429
            context.headers["Retry-After"] = "86400"
            return {"status": "error", "message": "Rate limit exceeded"}
        return OK

    requests_mock.post(ENDPOINT, json=answer)
    report, clock = run_runner(tmp_path, [model(i) for i in range(3)], max_retry_after=300.0)
    assert clock.sleeps == []
    assert [(r.model_id, r.outcome, r.attempts) for r in report.results] == [
        ("model-00", "submitted", 1),
        ("model-01", "failed", 1),
        ("model-02", "submitted", 1),
    ]
    assert report.results[1].message.startswith(
        "the server asked to wait 86400 s before retrying, more than --max-retry-after 300 s"
    )
    assert report.exit_code == ExitCode.FAILED
    assert report.stop_reason is None
    record = read_state(tmp_path / "prod.state.json", ENDPOINT).models["model-01"]
    assert record.status == "failed"
    assert record.last_error == report.results[1].message


def test_runner_deadline_skips_unstarted_entries(tmp_path: Path, requests_mock: rm.Mocker) -> None:
    clock = FakeClock()

    def slow(request: Any, context: Any) -> dict[str, Any]:
        clock.advance(4.0)  # each answer takes 4 s of the fake clock
        return OK

    requests_mock.post(ENDPOINT, json=slow)
    report, _ = run_runner(tmp_path, [model(i) for i in range(5)], deadline_s=10.0, clock=clock)
    assert [(r.model_id, r.outcome) for r in report.results] == [
        ("model-00", "submitted"),
        ("model-01", "submitted"),
        ("model-02", "submitted"),
        ("model-03", "skipped"),
        ("model-04", "skipped"),
    ]
    assert requests_mock.call_count == 3
    assert report.exit_code == ExitCode.FAILED
    assert report.stop_reason == "the --deadline passed"
    assert report.results[3].message == "not started: the --deadline passed"
    models = read_state(tmp_path / "prod.state.json", ENDPOINT).models
    assert sorted(models) == ["model-00", "model-01", "model-02"]


# --------------------------------------------------------------------------- AdaptiveGate


class GateClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fill(gate: AdaptiveGate, n: int) -> None:
    for _ in range(n):
        gate.acquire()


def _full_successes(gate: AdaptiveGate, held: int, count: int) -> int:
    """``count`` successes, each answered with every slot taken; returns the slots held."""
    for _ in range(count):
        while held < gate.limit:
            gate.acquire()
            held += 1
        gate.release("submitted", 200)
        held -= 1
    return held


def test_gate_halves_on_429_once_per_cooldown() -> None:
    clock = GateClock()
    gate = AdaptiveGate(8, clock=clock, cooldown_s=1.0)
    _fill(gate, 8)
    gate.release("retryable", 429)
    assert gate.limit == 4
    # The same overload, seen by the other requests in flight: no second halving.
    gate.release("retryable", 429)
    gate.release("retryable", 429)
    clock.now = 0.99
    gate.release("retryable", 429)
    assert gate.limit == 4
    assert gate.throttled == 4
    for _ in range(4):
        gate.release("retryable", 503)  # not pacing: the gate does not react
    assert gate.limit == 4
    clock.now = 1.0
    _fill(gate, 4)
    gate.release("retryable", 429)
    assert gate.limit == 2
    assert gate.lowest == 2


def test_gate_never_goes_below_one() -> None:
    clock = GateClock()
    gate = AdaptiveGate(3, clock=clock, cooldown_s=1.0)
    for step in range(5):
        clock.now = float(step * 10)
        gate.acquire()
        gate.release("retryable", 429)
        assert gate.limit == 1
    assert gate.lowest == 1
    gate.acquire()  # one request can always go
    gate.release("submitted", 200)


def test_gate_grows_back_by_one_after_limit_successes() -> None:
    clock = GateClock()
    gate = AdaptiveGate(16, clock=clock, cooldown_s=1.0)
    _fill(gate, 16)
    gate.release("retryable", 429)
    for _ in range(15):
        gate.release("retryable", 503)
    assert gate.limit == 8
    held = _full_successes(gate, 0, 7)
    assert gate.limit == 8
    held = _full_successes(gate, held, 1)
    assert gate.limit == 9  # 8 successes at limit 8
    held = _full_successes(gate, held, 8)
    assert gate.limit == 9
    held = _full_successes(gate, held, 1)
    assert gate.limit == 10  # 9 successes at limit 9
    assert gate.lowest == 8


def test_gate_never_grows_above_the_maximum() -> None:
    gate = AdaptiveGate(3)
    _full_successes(gate, 0, 200)
    assert gate.limit == 3


def test_gate_failures_do_not_grow_it() -> None:
    clock = GateClock()
    gate = AdaptiveGate(8, clock=clock, cooldown_s=1.0)
    _fill(gate, 8)
    gate.release("retryable", 429)
    for _ in range(7):
        gate.release("failed", 400)
    assert gate.limit == 4
    _fill(gate, 4)
    for i in range(60):
        gate.release("retryable" if i % 2 else "failed", 503 if i % 2 else 400)
        gate.acquire()
    assert gate.limit == 4


def test_gate_limit_of_zero_means_one() -> None:
    gate = AdaptiveGate(0)
    assert (gate.limit, gate.maximum) == (1, 1)


def _hammer(gate: AdaptiveGate, threads: int, rounds: int, verdict: Callable[[int], str]) -> int:
    """Many threads through the gate at once; returns the most requests seen in flight."""
    lock = threading.Lock()
    in_flight = 0
    most = 0
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        nonlocal in_flight, most
        start.wait()
        for i in range(rounds):
            gate.acquire()
            with lock:
                in_flight += 1
                most = max(most, in_flight)
            time.sleep(0.0005)
            with lock:
                in_flight -= 1
                # Released under our lock, so our count never lags behind the gate's.
                kind = verdict(n * rounds + i)
                if kind == "throttled":
                    gate.release("retryable", 429)
                else:
                    gate.release(kind, 200)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in pool)
    assert in_flight == 0
    return most


def test_gate_concurrent_acquire_never_exceeds_the_limit() -> None:
    gate = AdaptiveGate(3, cooldown_s=0.0)
    assert _hammer(gate, 12, 30, lambda _i: "submitted") <= 3
    assert gate.limit == 3

    mixed = AdaptiveGate(3, cooldown_s=0.0)
    assert _hammer(mixed, 12, 30, lambda i: "throttled" if i % 7 == 0 else "submitted") <= 3
    assert mixed.lowest < 3  # the 429s did cut it

    clock = GateClock()
    cut = AdaptiveGate(4, clock=clock, cooldown_s=1.0)
    for when in (0.0, 5.0):
        clock.now = when
        cut.acquire()
        cut.release("retryable", 429)
    assert cut.limit == 1
    assert _hammer(cut, 8, 20, lambda _i: "failed") == 1


# --------------------------------------------------------------------------- auth and account


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        pytest.param(401, {"status": "error", "message": "Invalid API key"}, id="http-401"),
        pytest.param(
            200,
            {"status": "error", "message": "Invalid Api Key", "tip": "check your key"},
            id="200-invalid-api-key",
        ),
    ],
)
@pytest.mark.parametrize("parallelism", ["1", "4", "8"])
def test_apply_auth_failure_sends_exactly_one_request(
    cli: Cli,
    api_key: str,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    sleeps: list[float],
    status: int,
    answer: dict[str, Any],
    parallelism: str,
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(6)])

    def refuse(request: Any, context: Any) -> dict[str, Any]:
        time.sleep(0.05)  # a real answer takes time: the other workers are ready by then
        context.status_code = status
        return answer

    requests_mock.post(ENDPOINT, json=refuse)
    report_file = tmp_path / "report.json"
    code, out, err = cli("apply", manifest, "--parallelism", parallelism, "--report", report_file)
    assert code == 5
    assert requests_mock.call_count == 1
    (refused,) = sent_ids(requests_mock)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["summary"] == {
        "submitted": 0,
        "failed": 1,
        "conflict": 0,
        "skipped": 5,
        "unchanged": 0,
    }
    assert outcomes(report) == {m: ("failed" if m == refused else "skipped") for m in ids(6)}
    assert by_id(report)[refused]["attempts"] == 1
    assert report["stop_reason"].startswith("authentication failed: Invalid ")
    assert {r["message"] for r in report["results"] if r["outcome"] == "skipped"} == {
        f"not started: {report['stop_reason']}"
    }
    # stderr names where the key comes from, never the key.
    assert err.splitlines()[-1] == (
        f"Error: {report['stop_reason']}; nothing more was sent. The API key (not shown) "
        "comes from the environment variable MODELSYNC_API_KEY: check that it is valid and "
        "that its account has credits, then run apply again."
    )
    assert KEY not in out + err + report_file.read_text(encoding="utf-8")
    assert sleeps == []
    # Only the refused model is in the state; the others were never sent.
    models = snapshot(manifest)["models"]
    assert sorted(models) == [refused]
    assert models[refused]["status"] == "failed"
    assert models[refused]["last_error"].startswith("Invalid ")


def test_apply_auth_failure_message_names_the_key_file(
    cli: Cli, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    requests_mock.post(ENDPOINT, status_code=401, json={"status": "error", "message": "nope"})
    code, out, err = cli("apply", manifest5, "--api-key-file", key_file)
    assert code == 5
    assert requests_mock.call_count == 1
    assert err.splitlines()[-1] == (
        "Error: authentication failed: nope; nothing more was sent. The API key (not shown) "
        f"comes from the file {key_file} (--api-key-file): check that it is valid and that "
        "its account has credits, then run apply again."
    )
    assert KEY not in out + err


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        pytest.param(
            402,
            {"status": "error", "message": "Insufficient credits. Please add more credits."},
            id="http-402",
        ),
        pytest.param(
            200,
            {"status": "error", "message": "Insufficient credits. Please add more credits."},
            id="200-insufficient-credits",
        ),
    ],
)
def test_apply_account_failure_stops_submitting(
    cli: Cli,
    api_key: str,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    sleeps: list[float],
    status: int,
    answer: dict[str, Any],
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(6)])

    def refuse(request: Any, context: Any) -> dict[str, Any]:
        time.sleep(0.05)
        context.status_code = status
        return answer

    requests_mock.post(ENDPOINT, json=refuse)
    code, out, err = cli("apply", manifest, "--output", "json")
    assert code == 5
    assert requests_mock.call_count == 1
    report = json.loads(out)
    assert report["summary"] == {
        "submitted": 0,
        "failed": 1,
        "conflict": 0,
        "skipped": 5,
        "unchanged": 0,
    }
    assert report["stop_reason"] == (
        "the account cannot load models: Insufficient credits. Please add more credits."
    )
    assert "MODELSYNC_API_KEY" in err
    assert KEY not in out + err


def test_apply_auth_failure_after_successes_keeps_them(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(5)])
    requests_mock.post(
        ENDPOINT,
        [{"json": OK}, {"json": OK}, {"status_code": 401, "json": {"message": "Invalid API key"}}],
    )
    code, out, _err = cli("apply", manifest, "--parallelism", "1", "--output", "json")
    assert code == 5
    assert requests_mock.call_count == 3
    assert outcomes(json.loads(out)) == {
        "model-00": "submitted",
        "model-01": "submitted",
        "model-02": "failed",
        "model-03": "skipped",
        "model-04": "skipped",
    }
    models = snapshot(manifest)["models"]
    assert {m: r["status"] for m, r in models.items()} == {
        "model-00": "submitted",
        "model-01": "submitted",
        "model-02": "failed",
    }


def test_apply_credits_running_out_mid_run_stops_new_submissions(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(16)])
    answered = 0
    lock = threading.Lock()

    def answer(request: Any, context: Any) -> dict[str, Any]:
        nonlocal answered
        time.sleep(0.02)
        with lock:
            answered += 1
            if answered <= 3:
                return OK
        context.status_code = 402
        return {"status": "error", "message": "Insufficient credits"}

    requests_mock.post(ENDPOINT, json=answer)
    code, out, _err = cli("apply", manifest, "--parallelism", "4", "--output", "json")
    assert code == 5
    # The 4th answer stops the run: only requests already in flight (3 at most) follow it.
    assert 4 <= requests_mock.call_count <= 7
    report = json.loads(out)
    summary = report["summary"]
    assert summary["submitted"] == 3
    assert summary["failed"] == requests_mock.call_count - 3
    assert summary["skipped"] == 16 - requests_mock.call_count
    assert report["stop_reason"] == "the account cannot load models: Insufficient credits"


# --------------------------------------------------------------------------- missing key


def test_apply_without_a_key_exits_5_before_any_request(
    cli: Cli, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    code, out, err = cli("apply", manifest5)
    assert code == 5
    assert out == ""
    assert err == (
        "Error: no API key: the environment variable MODELSYNC_API_KEY is not set or empty "
        "(set it, e.g. from your CI secret store, or pass --api-key-file PATH); "
        "nothing was sent\n"
    )
    assert requests_mock.call_count == 0
    assert not (manifest5.parent / ".modelsync").exists()


def test_apply_without_a_key_names_the_manifest_variable(
    cli: Cli, tmp_path: Path, requests_mock: rm.Mocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "prod.yaml"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "target": {"endpoint": ENDPOINT, "api_key_env": "TEAM_ML_KEY"},
                "models": [model(0)],
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)  # not the variable this manifest names
    code, _out, err = cli("apply", manifest)
    assert code == 5
    assert "the environment variable TEAM_ML_KEY is not set or empty" in err
    assert requests_mock.call_count == 0


def test_apply_with_api_key_file_sends_its_key_and_never_shows_it(
    cli: Cli, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    file_key = "file-key-9d1e47aa3c"
    key_file = tmp_path / "key.txt"
    key_file.write_text(file_key + "\n", encoding="utf-8")
    requests_mock.post(ENDPOINT, json=OK)
    code, out, err = cli(
        "-vv", "apply", manifest5, "--api-key-file", key_file, "--report", tmp_path / "r.json"
    )
    assert code == 0
    assert requests_mock.call_count == 5
    assert {b["key"] for b in bodies(requests_mock)} == {file_key}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != key_file:
            assert file_key not in path.read_text(encoding="utf-8"), path
    assert file_key not in out + err


# --------------------------------------------------------------------------- canaries


CANARY_KEY = "CANARY-KEY-3b9f1c7e2d"
CANARY_TOKEN = "CANARY-TOKEN-8a4d6e0f5c"


def _echo_server(request: Any, context: Any) -> str:
    """Answers with the whole request body in its error messages, in several envelopes."""
    raw = request.text
    body = request.json()
    model_id = body["model_id"]
    if model_id == "model-00":
        context.status_code = 400
        return json.dumps({"status": "error", "message": f"bad request: {raw}"})
    if model_id == "model-01":
        context.status_code = 500
        return f"Internal Server Error while handling {raw}"  # not JSON
    if model_id == "model-02":
        context.status_code = 200
        return json.dumps({"status": "error", "message": {"url": [raw]}, "echo": body})
    if model_id == "model-03":
        context.status_code = 200
        return json.dumps({"status": "failed", "messege": raw, "tips": body["url"]})
    if model_id == "model-04":
        context.status_code = 503
        return json.dumps({"status": "error", "message": f"overloaded, try again: {raw}"})
    context.status_code = 200
    return json.dumps({"status": "success", "message": f"model load started for {raw}"})


def _canary_manifest(tmp_path: Path) -> Path:
    url = "https://civitai.com/api/download/models/{n}?type=Model&token=${{CIVITAI_TOKEN}}"
    models = [
        model(
            i,
            url=url.format(n=1000 + i),
            model_image=f"https://img.test/{i}.png?t=${{CIVITAI_TOKEN}}",
        )
        for i in range(7)
    ]
    return write_manifest(tmp_path / "prod.yaml", models)


def _assert_no_canary(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        assert "CANARY" not in text.upper(), where
        for secret in (CANARY_KEY, CANARY_TOKEN):
            # Partial leaks too: any 10 characters of the secrets' random tails.
            tail = secret.rsplit("-", 1)[1]
            assert tail not in text, where


def _files_under(root: Path) -> dict[str, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return files


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_apply_never_shows_the_key_or_interpolated_secrets(
    cli: Cli,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
    log_format: str,
) -> None:
    monkeypatch.setenv("MODELSYNC_API_KEY", CANARY_KEY)
    monkeypatch.setenv("CIVITAI_TOKEN", CANARY_TOKEN)
    manifest = _canary_manifest(tmp_path)
    seen_by_lock_info: list[str] = []

    def watch_files(request: Any, context: Any) -> str:
        # The lock-info file lives only while the run holds the lock: read it mid-run.
        for path in (tmp_path / ".modelsync").iterdir():
            seen_by_lock_info.append(path.read_text(encoding="utf-8", errors="replace"))
        return _echo_server(request, context)

    requests_mock.post(ENDPOINT, text=watch_files)
    report_file = tmp_path / "report.json"
    code, out, err = cli(
        "-vv",
        "--log-format",
        log_format,
        "apply",
        manifest,
        "--max-attempts",
        "2",
        "--report",
        report_file,
    )
    assert code == 1
    # The server did receive the secrets: the canaries are real.
    sent = bodies(requests_mock)
    assert {b["key"] for b in sent} == {CANARY_KEY}
    assert all(CANARY_TOKEN in b["url"] for b in sent)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert outcomes(report) == {
        "model-00": "failed",
        "model-01": "failed",
        "model-02": "failed",
        "model-03": "failed",
        "model-04": "failed",
        "model-05": "submitted",
        "model-06": "submitted",
    }
    assert seen_by_lock_info  # the state folder's files were read while the run held the lock
    assert any('"pid"' in text for text in seen_by_lock_info)
    texts = {"stdout": out, "stderr": err, **_files_under(tmp_path)}
    texts.update({f"mid-run {i}": t for i, t in enumerate(seen_by_lock_info)})
    assert str(report_file) in texts
    assert str(state_path_of(manifest)) in texts
    assert str(state_path_of(manifest)) + ".backup" not in texts  # first run: no backup
    _assert_no_canary(texts)
    assert "***" in out  # masked, not dropped: the messages echoed the body
    if log_format == "json":
        lines = err.splitlines()
        assert len(lines) >= 7
        for line in lines:
            entry = json.loads(line)
            assert isinstance(entry, dict) and "message" in entry, line

    # A second run (retries, a backup now exists) is just as clean.
    code, out2, err2 = cli(
        "-vv",
        "--log-format",
        log_format,
        "apply",
        manifest,
        "--max-attempts",
        "1",
        "--report",
        report_file,
    )
    assert code == 1
    texts = {"stdout": out2, "stderr": err2, **_files_under(tmp_path)}
    assert str(state_path_of(manifest)) + ".backup" in texts
    _assert_no_canary(texts)
    if log_format == "json":
        for line in err2.splitlines():
            json.loads(line)


def test_apply_auth_stop_in_json_logs_is_json(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    requests_mock.post(ENDPOINT, status_code=401, json={"message": "Invalid API key"})
    code, _out, err = cli("--log-format", "json", "apply", manifest5)
    assert code == 5
    entries = [json.loads(line) for line in err.splitlines()]
    assert any("MODELSYNC_API_KEY" in e["message"] for e in entries)
    assert KEY not in err


# --------------------------------------------------------------------------- idempotence


def test_apply_twice_sends_nothing_the_second_time(
    cli: Cli, api_key: str, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    code, _out, _err = cli("apply", manifest5)
    assert code == 0
    assert requests_mock.call_count == 5
    assert [b["force_load"] for b in bodies(requests_mock)] == ["no"] * 5  # creates
    first = snapshot(manifest5)
    assert first["serial"] >= 1
    code, out, _err = cli("apply", manifest5, "--output", "json")
    assert code == 0
    assert requests_mock.call_count == 5
    assert json.loads(out) == {
        "format_version": 1,
        "summary": {"submitted": 0, "failed": 0, "conflict": 0, "skipped": 0, "unchanged": 5},
        "results": [],
    }
    assert snapshot(manifest5)["serial"] == first["serial"]  # nothing changed, nothing written


def test_apply_update_sends_one_request_with_force_load_yes(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    models = [model(i) for i in range(4)]
    manifest = write_manifest(tmp_path / "prod.yaml", models)
    requests_mock.post(ENDPOINT, json=OK)
    assert cli("apply", manifest)[0] == 0
    requests_mock.reset_mock()

    models[1] = model(1, model_name="Renamed")
    write_manifest(manifest, models)
    code, out, _err = cli("apply", manifest, "--output", "json")
    assert code == 0
    assert requests_mock.call_count == 1
    (body,) = bodies(requests_mock)
    assert body == {
        "model_id": "model-01",
        "url": models[1]["url"],
        "model_format": "safetensors",
        "model_category": "stable_diffusion",
        "model_name": "Renamed",
        "revision": "fp16",
        "model_visibility": "private",
        "hf_upload": "no",
        "force_load": "yes",
        "key": KEY,
    }
    report = json.loads(out)
    assert report["summary"] == {
        "submitted": 1,
        "failed": 0,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 3,
    }
    assert [(r["model_id"], r["action"]) for r in report["results"]] == [("model-01", "update")]
    recorded = snapshot(manifest)["models"]["model-01"]
    assert recorded["request"]["model_name"] == "Renamed"
    assert recorded["request"]["force_load"] == "yes"
    assert "key" not in recorded["request"]


def test_apply_update_keeps_an_explicit_force_load_no(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    models = [model(i) for i in range(3)]
    manifest = write_manifest(tmp_path / "prod.yaml", models)
    requests_mock.post(ENDPOINT, json=OK)
    assert cli("apply", manifest)[0] == 0
    requests_mock.reset_mock()

    models[2] = model(2, revision="fp32", force_load="no")
    write_manifest(manifest, models)
    assert cli("apply", manifest)[0] == 0
    assert [(b["model_id"], b["revision"], b["force_load"]) for b in bodies(requests_mock)] == [
        ("model-02", "fp32", "no")
    ]
    requests_mock.reset_mock()
    # force_load is not part of the fingerprint: changing only it sends nothing.
    models[2] = model(2, revision="fp32", force_load="yes")
    write_manifest(manifest, models)
    assert cli("apply", manifest)[0] == 0
    assert requests_mock.call_count == 0


def test_apply_create_sends_an_explicit_force_load_as_written(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(
        tmp_path / "prod.yaml",
        [model(0), model(1, force_load="yes"), model(2)],
        defaults={"hf_upload": "no"},
    )
    requests_mock.post(ENDPOINT, json=OK)
    assert cli("apply", manifest, "--parallelism", "1")[0] == 0
    assert [(b["model_id"], b["force_load"]) for b in bodies(requests_mock)] == [
        ("model-00", "no"),
        ("model-01", "yes"),
        ("model-02", "no"),
    ]


# --------------------------------------------------------------------------- retry policy (CLI)


def test_apply_retries_a_500_then_submits(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(0)])
    requests_mock.post(ENDPOINT, [{"status_code": 500, "text": "oops"}, {"json": OK}])
    code, out, err = cli("apply", manifest, "--output", "json")
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert (result["outcome"], result["attempts"], result["http_status"]) == ("submitted", 2, 200)
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 1.0
    assert "model-00: attempt 1 of 5 failed (HTTP 500" in err
    record = snapshot(manifest)["models"]["model-00"]
    assert (record["status"], record["attempts"]) == ("submitted", 2)


def test_apply_honours_retry_after(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(0)])
    requests_mock.post(
        ENDPOINT,
        [
            {"status_code": 429, "headers": {"Retry-After": "2"}, "json": {"message": "slow"}},
            {"status_code": 429, "json": {"status": "error", "message": "x", "retry_after": 7}},
            {"json": OK},
        ],
    )
    code, out, _err = cli("apply", manifest, "--output", "json")
    assert code == 0
    # As named, plus up to a fifth so that workers refused together do not return together.
    assert len(sleeps) == 2
    assert 2.0 <= sleeps[0] <= 2.4 and 7.0 <= sleeps[1] <= 8.4
    assert json.loads(out)["results"][0]["attempts"] == 3


def test_apply_retry_after_over_max_retry_after_fails_that_entry_only(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(4)])

    def answer(request: Any, context: Any) -> dict[str, Any]:
        if request.json()["model_id"] == "model-02":
            context.status_code = 503
            context.headers["Retry-After"] = "86400"
            return {"status": "error", "message": "maintenance"}
        return OK

    requests_mock.post(ENDPOINT, json=answer)
    code, out, _err = cli("apply", manifest, "--max-retry-after", "60", "--output", "json")
    assert code == 1
    report = json.loads(out)
    assert outcomes(report) == {
        "model-00": "submitted",
        "model-01": "submitted",
        "model-02": "failed",
        "model-03": "submitted",
    }
    failed = by_id(report)["model-02"]
    assert failed["attempts"] == 1
    assert failed["http_status"] == 503
    assert failed["message"] == (
        "the server asked to wait 86400 s before retrying, more than --max-retry-after 60 s: "
        "not retried in this run (last: HTTP 503: maintenance)"
    )
    assert "stop_reason" not in report
    assert sleeps == []
    assert requests_mock.call_count == 4


# --------------------------------------------------------------------------- failures


def test_apply_failed_entry_does_not_stop_the_others(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(6)])

    def answer(request: Any, context: Any) -> dict[str, Any]:
        if request.json()["model_id"] in ("model-01", "model-04"):
            context.status_code = 400
            return {"status": "error", "message": {"url": ["The url format is invalid."]}}
        return OK

    requests_mock.post(ENDPOINT, json=answer)
    code, out, err = cli("apply", manifest)
    assert code == 1
    assert sorted(sent_ids(requests_mock)) == ids(6)  # every entry attempted, once
    assert sleeps == []
    assert out.splitlines()[-5:] == [
        "Apply: 4 submitted, 2 failed, 0 skipped, 0 unchanged.",
        "Not submitted:",
        "  model-01 (create, failed): url: The url format is invalid.",
        "  model-04 (create, failed): url: The url format is invalid.",
        "Failed models are retried by the next apply.",
    ]
    assert "warning: model-01: failed (create, 1 attempt" in err
    models = snapshot(manifest)["models"]
    for model_id in ("model-01", "model-04"):
        assert models[model_id]["status"] == "failed"
        assert models[model_id]["last_error"] == "url: The url format is invalid."
        assert models[model_id]["attempts"] == 1
        assert models[model_id]["cause"] == "rejected"
    assert {m for m, r in models.items() if r["status"] == "submitted"} == {
        "model-00",
        "model-02",
        "model-03",
        "model-05",
    }

    code, out, _err = cli("plan", manifest, "--output", "json")
    assert code == 0
    plan = json.loads(out)
    assert plan["summary"] == {
        "create": 0,
        "update": 0,
        "retry": 2,
        "conflict": 0,
        "unchanged": 4,
        "orphan": 0,
    }
    # Refused creates: the request was not acted on, so the retry sends what a create
    # sends (force_load no), never a reload that could replace someone else's model.
    assert [(c["model_id"], c["action"], c["force_load"]) for c in plan["changes"]] == [
        ("model-01", "retry", "no"),
        ("model-04", "retry", "no"),
    ]

    # The retry run sends only those two, as planned.
    requests_mock.reset_mock()
    requests_mock.post(ENDPOINT, json=OK)
    code, out, _err = cli("apply", manifest, "--output", "json")
    assert code == 0
    assert sorted((b["model_id"], b["force_load"]) for b in bodies(requests_mock)) == [
        ("model-01", "no"),
        ("model-04", "no"),
    ]
    assert [r["action"] for r in json.loads(out)["results"]] == ["retry", "retry"]


def test_apply_already_exists_says_how_to_go_on(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(0)])
    requests_mock.post(ENDPOINT, json={"status": "error", "message": "Model id already exists"})
    code, out, err = cli("apply", manifest, "--output", "json")
    assert code == 1
    (result,) = json.loads(out)["results"]
    assert (result["outcome"], result["message"]) == (
        "conflict",
        "model id 'model-00' already exists on the account and modelsync did not put it "
        "there: not replaced",
    )
    # The ways on, with the whole command, on stderr (stdout is the JSON report).
    assert f"  - it is the right model: modelsync state adopt model-00 {manifest}\n" in err
    assert "  - replace it: set force_load: yes on the entry, then apply\n" in err


# --------------------------------------------------------------------------- API down


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(
            {"status_code": 503, "json": {"status": "error", "message": "down"}}, id="503"
        ),
        pytest.param({"exc": requests.exceptions.ConnectionError("refused")}, id="conn-error"),
    ],
)
def test_apply_stops_when_the_api_is_down(
    cli: Cli,
    api_key: str,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    sleeps: list[float],
    failure: dict[str, Any],
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(20)])
    requests_mock.post(ENDPOINT, **failure)
    code, out, _err = cli(
        "apply", manifest, "--max-attempts", "2", "--parallelism", "1", "--output", "json"
    )
    assert code == 1
    # 5 models x 2 attempts = 10 failures in a row over 5 models: new models pause. With
    # nothing under way to probe, one model at a time goes as a probe: 3 models x 2 failed
    # probes each, and the API is down. Nothing after.
    assert requests_mock.call_count == DOWN_STREAK + PROBE_MODELS * PROBES_EACH == 16
    report = json.loads(out)
    assert report["summary"] == {
        "submitted": 0,
        "failed": 8,
        "conflict": 0,
        "skipped": 12,
        "unchanged": 0,
    }
    assert report["stop_reason"] == (
        "the API looks down: 10 failed attempts in a row over 5 models, then 6 failed probes "
        "over 3 models in 0 s; stopped starting new submissions"
    )
    assert [r["outcome"] for r in report["results"]] == ["failed"] * 8 + ["skipped"] * 12
    assert len(sleeps) == 8  # one backoff per model between its two attempts
    models = snapshot(manifest)["models"]
    assert sorted(models) == ids(8)  # the skipped creates were never sent, never recorded
    assert {m["cause"] for m in models.values()} == {"maybe_reached"}


def test_apply_api_down_with_parallelism_is_bounded(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(20)])
    requests_mock.post(ENDPOINT, status_code=503, json={"status": "error", "message": "down"})
    code, out, _err = cli(
        "apply", manifest, "--max-attempts", "2", "--parallelism", "4", "--output", "json"
    )
    assert code == 1
    # The 10th failure pauses new models; the 3 other requests then in flight finish and
    # the retries probe: the API is down once 3 models failed 2 probes each.
    assert 10 <= requests_mock.call_count <= DOWN_STREAK + 3 + PROBE_MODELS * PROBES_EACH
    report = json.loads(out)
    assert report["stop_reason"].startswith("the API looks down: 10 failed attempts in a row")
    # 3 models with 2 failed probes each; the requests in flight at the pause probe too,
    # with the attempts they had left (1 or 2), so 3 to 6 models were probed.
    probed = re.search(r"failed probes over (\d+) models", report["stop_reason"])
    assert probed is not None and 3 <= int(probed.group(1)) <= 3 + 3
    assert report["summary"]["submitted"] == 0
    # Started: at most 9 models before the pause (10 failures, 2 attempts each, 4 at a
    # time) and 3 probing models after it; the other 8 or more were never sent.
    assert report["summary"]["skipped"] >= 8
    assert report["summary"]["failed"] + report["summary"]["skipped"] == 20


def test_apply_429s_alone_do_not_stop_the_run(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(20)])
    requests_mock.post(
        ENDPOINT,
        status_code=429,
        json={"status": "error", "message": "Rate limit exceeded.", "retry_after": 1},
    )
    code, out, _err = cli(
        "apply", manifest, "--max-attempts", "2", "--parallelism", "1", "--output", "json"
    )
    assert code == 1
    # 429s are pacing: they use no attempt, and a model waits as the server asks, up to
    # MAX_RATE_LIMITED answers without a --deadline; nor do they open the breaker.
    assert requests_mock.call_count == 20 * MAX_RATE_LIMITED
    report = json.loads(out)
    assert "stop_reason" not in report
    assert report["summary"] == {
        "submitted": 0,
        "failed": 20,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 0,
    }
    assert len(sleeps) == 20 * (MAX_RATE_LIMITED - 1)
    assert all(1.0 <= s <= 1.2 for s in sleeps)


def test_apply_a_success_resets_the_down_streak(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(12)])
    down = {"status_code": 503, "json": {"message": "down"}}
    # 4 models fail twice (8 in a row), one succeeds, 4 more fail twice, one succeeds...
    answers = ([down] * 8 + [{"json": OK}]) * 3
    requests_mock.post(ENDPOINT, answers[:26] + [{"json": OK}] * 10)
    code, out, _err = cli(
        "apply", manifest, "--max-attempts", "2", "--parallelism", "1", "--output", "json"
    )
    assert code == 1
    assert requests_mock.call_count == 22
    report = json.loads(out)
    assert "stop_reason" not in report
    assert report["summary"] == {
        "submitted": 2,
        "failed": 10,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 0,
    }


def test_apply_rejections_of_entries_do_not_count_as_down(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(15)])
    requests_mock.post(ENDPOINT, status_code=400, json={"status": "error", "message": "bad"})
    code, out, _err = cli("apply", manifest, "--parallelism", "1", "--output", "json")
    assert code == 1
    assert requests_mock.call_count == 15
    report = json.loads(out)
    assert "stop_reason" not in report
    assert report["summary"]["failed"] == 15


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_apply_never_follows_a_redirect_to_another_host(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, status: int
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(0), model(1)])
    requests_mock.post(ENDPOINT, status_code=status, headers={"Location": OTHER_HOST})
    other = requests_mock.post(OTHER_HOST, json=OK)
    code, out, _err = cli("apply", manifest, "--output", "json")
    assert code == 1
    assert other.call_count == 0
    # The endpoint answers every request alike: the run stops after the first answer.
    assert requests_mock.call_count == 1
    report = json.loads(out)
    assert outcomes(report) == {"model-00": "failed", "model-01": "skipped"}
    assert OTHER_HOST in report["results"][0]["message"]
    assert report["results"][0]["http_status"] == status
    assert report["stop_reason"].startswith("the endpoint redirected")
    assert KEY not in out


def test_apply_follows_a_same_host_307(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(0)])
    moved = "https://api.test/api/v4/load_model"
    requests_mock.post(ENDPOINT, status_code=307, headers={"Location": "/api/v4/load_model"})
    new = requests_mock.post(moved, json=OK)
    code, _out, _err = cli("apply", manifest)
    assert code == 0
    assert new.call_count == 1
    assert new.last_request is not None and new.last_request.json()["key"] == KEY


# --------------------------------------------------------------------------- dry run, output


def test_apply_dry_run_sends_nothing_and_writes_no_state(
    cli: Cli, api_key: str, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    code, out, _err = cli("apply", manifest5, "--dry-run", "--output", "json")
    assert code == 0
    assert requests_mock.call_count == 0
    assert not (manifest5.parent / ".modelsync").exists()
    plan = json.loads(out)
    assert plan["summary"] == {
        "create": 5,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 0,
        "orphan": 0,
    }
    code, out, _err = cli("apply", manifest5, "--dry-run")
    assert code == 0
    assert out.endswith("Plan: 5 to create, 0 to update, 0 to retry, 0 unchanged, 0 orphaned.\n")
    assert requests_mock.call_count == 0
    assert not (manifest5.parent / ".modelsync").exists()


def test_apply_dry_run_needs_no_key(cli: Cli, requests_mock: rm.Mocker, manifest5: Path) -> None:
    code, _out, _err = cli("apply", manifest5, "--dry-run")
    assert code == 0
    assert requests_mock.call_count == 0


def test_apply_json_report_shape_and_report_file(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(3)])
    requests_mock.post(ENDPOINT, json=OK)
    assert cli("apply", manifest, "--only", "model-00")[0] == 0

    def answer(request: Any, context: Any) -> dict[str, Any]:
        if request.json()["model_id"] == "model-02":
            context.status_code = 422
            return {"status": "error", "message": "The model name is invalid."}
        return OK

    requests_mock.post(ENDPOINT, json=answer)
    report_file = tmp_path / "out" / "report.json"
    report_file.parent.mkdir()
    code, out, _err = cli("apply", manifest, "--output", "json", "--report", report_file)
    assert code == 1
    document = json.loads(out)
    assert set(document) == REPORT_KEYS
    assert document["format_version"] == 1
    assert document["summary"] == {
        "submitted": 1,
        "failed": 1,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 1,
    }
    assert [set(r) for r in document["results"]] == [RESULT_KEYS, RESULT_KEYS]
    first, second = document["results"]
    assert {k: v for k, v in first.items() if k != "duration_s"} == {
        "model_id": "model-01",
        "action": "create",
        "outcome": "submitted",
        "attempts": 1,
        "http_status": 200,
        "message": "model load started",
    }
    assert {k: v for k, v in second.items() if k != "duration_s"} == {
        "model_id": "model-02",
        "action": "create",
        "outcome": "failed",
        "attempts": 1,
        "http_status": 422,
        "message": "The model name is invalid.",
    }
    for result in document["results"]:
        assert isinstance(result["duration_s"], float) and 0 <= result["duration_s"] < 5
    assert json.loads(report_file.read_text(encoding="utf-8")) == document
    assert out.startswith("{")  # stdout holds the report only


def test_apply_text_output_report_file(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    report_file = tmp_path / "report.json"
    code, out, _err = cli("apply", manifest5, "--report", report_file)
    assert code == 0
    assert out.splitlines()[-1] == "Apply: 5 submitted, 0 failed, 0 skipped, 0 unchanged."
    document = json.loads(report_file.read_text(encoding="utf-8"))
    assert set(document) == REPORT_KEYS
    assert document["summary"] == {
        "submitted": 5,
        "failed": 0,
        "conflict": 0,
        "skipped": 0,
        "unchanged": 0,
    }
    assert [r["model_id"] for r in document["results"]] == ids(5)


# --------------------------------------------------------------------------- pending first


def test_apply_records_pending_before_each_post(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    state_path = state_path_of(manifest5)
    seen: dict[str, tuple[str, int]] = {}

    def answer(request: Any, context: Any) -> dict[str, Any]:
        model_id = request.json()["model_id"]
        record = read_state(state_path, ENDPOINT).models[model_id]
        seen[model_id] = (record.status, record.attempts)
        return OK

    requests_mock.post(ENDPOINT, json=answer)
    code, _out, _err = cli("apply", manifest5)
    assert code == 0
    assert seen == {m: ("pending", 0) for m in ids(5)}
    assert {m: r["status"] for m, r in snapshot(manifest5)["models"].items()} == {
        m: "submitted" for m in ids(5)
    }


def test_apply_pending_survives_a_crash_and_is_retried(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, manifest5: Path
) -> None:
    def crash(request: Any, context: Any) -> dict[str, Any]:
        if request.json()["model_id"] == "model-02":
            raise KeyboardInterrupt  # the process dies mid-request
        return OK

    requests_mock.post(ENDPOINT, json=crash)
    code, _out, _err = cli("apply", manifest5, "--parallelism", "1")
    assert code == 130
    models = read_state(state_path_of(manifest5), ENDPOINT).models
    assert models["model-02"].status == "pending"
    requests_mock.reset_mock()
    requests_mock.post(ENDPOINT, json=OK)
    code, out, _err = cli("apply", manifest5, "--parallelism", "1", "--output", "json")
    assert code == 0
    assert [(r["model_id"], r["action"]) for r in json.loads(out)["results"]] == [
        ("model-02", "retry"),
        ("model-03", "create"),
        ("model-04", "create"),
    ]
    assert [b["force_load"] for b in bodies(requests_mock)] == ["yes", "no", "no"]


# --------------------------------------------------------------------------- deadline (CLI)


def test_apply_deadline_skips_unstarted_entries(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(6)])

    def slow(request: Any, context: Any) -> dict[str, Any]:
        time.sleep(0.15)
        return OK

    requests_mock.post(ENDPOINT, json=slow)
    started = time.monotonic()
    code, out, _err = cli(
        "apply", manifest, "--deadline", "0.2", "--parallelism", "1", "--output", "json"
    )
    elapsed = time.monotonic() - started
    assert code == 1
    assert elapsed < 2.0
    report = json.loads(out)
    results = report["results"]
    assert [r["model_id"] for r in results] == ids(6)
    submitted = [r["model_id"] for r in results if r["outcome"] == "submitted"]
    skipped = [r["model_id"] for r in results if r["outcome"] == "skipped"]
    assert submitted == ids(2)  # started at 0 s and 0.15 s; the third would start after 0.2 s
    assert skipped == ids(6)[2:]
    assert requests_mock.call_count == 2
    assert report["stop_reason"] == "the --deadline passed"
    assert {r["message"] for r in results if r["outcome"] == "skipped"} == {
        "not started: the --deadline passed"
    }
    assert sorted(snapshot(manifest)["models"]) == ids(2)


# --------------------------------------------------------------------------- signals


def _subprocess_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MODELSYNC_") and k not in ("CIVITAI_TOKEN", "HF_TOKEN")
    }
    env["MODELSYNC_API_KEY"] = "sandbox"
    env["PYTHONPATH"] = str(Path(modelsync.__file__).resolve().parent.parent)
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture
def slow_sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(latency_ms=300, max_queued=10)) as sandbox:
        yield sandbox


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_apply_signal_finishes_in_flight_and_starts_nothing_new(
    tmp_path: Path, slow_sandbox: Sandbox, signum: int, code: int
) -> None:
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(20)])
    state = tmp_path / "state" / "prod.state.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelsync",
            "apply",
            str(manifest),
            "--endpoint",
            slow_sandbox.load_model_url,
            "--state",
            str(state),
            "--parallelism",
            "2",
            "--output",
            "json",
        ],
        env=_subprocess_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The run has started submitting (its handlers are installed before the first POST).
        _wait_for(lambda: slow_sandbox.stats()["load_model"] >= 1, timeout=20)
        time.sleep(0.5)
        process.send_signal(signum)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err
    name = signal.Signals(signum).name
    assert (
        f"{name}: finishing the requests in flight, starting no new ones "
        "(at most 10 s; again to abandon them now)..."
    ) in err
    report = json.loads(out)
    assert report["stop_reason"] == f"interrupted by {name}"
    results = by_id(report)
    submitted = sorted(m for m, r in results.items() if r["outcome"] == "submitted")
    assert report["summary"]["failed"] == 0
    assert 2 <= len(submitted) <= 8  # 0.5 s at 2 x 300 ms: 2-4 done plus 2 in flight
    assert report["summary"]["skipped"] == 20 - len(submitted)
    # What was sent was recorded as submitted; nothing else was sent or recorded.
    received = slow_sandbox.stats()["load_model"]
    assert received == len(submitted)
    assert sorted(slow_sandbox.models()) == submitted
    snapshot_data = json.loads(state.read_text(encoding="utf-8"))
    assert {m: r["status"] for m, r in snapshot_data["models"].items()} == dict.fromkeys(
        submitted, "submitted"
    )
    assert not state.with_name(state.name + ".journal").exists()
    assert not state.with_name(state.name + ".lock.info").exists()


# ------------------------------------------------------------------ the breaker (DESIGN §4)


def _fail(watch: HealthWatch, model_id: str, times: int = 1, kind: str = "retryable") -> None:
    watch.bind(model_id)
    for _ in range(times):
        watch.observe(kind, 503 if kind == "retryable" else 400)


def test_breaker_pauses_after_a_streak_over_three_models_and_resumes_on_a_success() -> None:
    clock = FakeClock()
    stop = StopFlag()
    watch = HealthWatch(stop, clock)
    _fail(watch, "a", 4)
    _fail(watch, "b", 4)
    _fail(watch, "c", 1)
    assert not watch.paused  # 9 in a row
    _fail(watch, "c", 1)
    assert watch.paused and not stop.is_set()
    watch.bind("d")
    watch.observe("submitted", 200)
    assert not watch.paused and not stop.is_set()


def test_breaker_needs_three_models_not_just_ten_failures() -> None:
    stop = StopFlag()
    watch = HealthWatch(stop, FakeClock())
    _fail(watch, "a", 6)
    _fail(watch, "b", 6)
    assert not watch.paused


def test_breaker_429s_and_rejections_do_not_count() -> None:
    stop = StopFlag()
    watch = HealthWatch(stop, FakeClock())
    for model_id in "abcdefghijkl":
        watch.bind(model_id)
        watch.observe("retryable", 429)
        watch.observe("failed", 400)
    assert not watch.paused


def test_breaker_stops_when_three_models_fail_two_probes_each() -> None:
    stop = StopFlag()
    watch = HealthWatch(stop, FakeClock())
    for model_id in "abcde":
        _fail(watch, model_id, 2)
    assert watch.paused
    _fail(watch, "f", 2)
    _fail(watch, "g", 2)
    _fail(watch, "h", 1)
    assert not stop.is_set()
    _fail(watch, "h", 1)
    assert stop.is_set() and stop.exit_code == ExitCode.FAILED
    assert stop.reason is not None and stop.reason.startswith(
        "the API looks down: 10 failed attempts in a row over 5 models, then 6 failed probes"
    )


def test_breaker_stops_after_a_minute_of_failed_probing() -> None:
    clock = FakeClock()
    stop = StopFlag()
    watch = HealthWatch(stop, clock)
    for model_id in "abcde":
        _fail(watch, model_id, 2)
    _fail(watch, "f", 1)
    clock.advance(59.0)
    _fail(watch, "f", 0)
    assert not stop.is_set()
    clock.advance(1.0)
    _fail(watch, "g", 1)
    assert stop.is_set()


def test_breaker_a_flaky_api_converges(
    cli: Cli, api_key: str, tmp_path: Path, requests_mock: rm.Mocker, sleeps: list[float]
) -> None:
    # Every model's first attempt fails (503), its retry succeeds: the breaker pauses new
    # models while retries probe, resumes on their success, and every model gets through.
    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(30)])
    seen: set[str] = set()

    def flaky(request: Any, context: Any) -> dict[str, Any]:
        model_id = request.json()["model_id"]
        if model_id not in seen:
            seen.add(model_id)
            context.status_code = 503
            return {"status": "error", "message": "Service Unavailable"}
        return OK

    requests_mock.post(ENDPOINT, json=flaky)
    code, out, _err = cli("apply", manifest, "--parallelism", "8", "--output", "json")
    assert code == 0, out
    assert requests_mock.call_count == 60  # exactly 2 per model
    assert json.loads(out)["summary"]["submitted"] == 30


def test_apply_a_state_that_cannot_record_still_gets_its_report(
    cli: Cli,
    api_key: str,
    tmp_path: Path,
    requests_mock: rm.Mocker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelsync.errors import StateError
    from modelsync.store.file import StateStore

    manifest = write_manifest(tmp_path / "prod.yaml", [model(i) for i in range(6)])
    requests_mock.post(ENDPOINT, json=OK)
    real_record = StateStore.record
    recorded: list[str] = []

    def record(self: StateStore, model_id: str, rec: Any) -> None:
        if len(recorded) >= 5:  # pending + submitted of 2 models, then the disk is full
            raise StateError("cannot append to the journal: No space left on device")
        recorded.append(model_id)
        real_record(self, model_id, rec)

    monkeypatch.setattr(StateStore, "record", record)
    report_file = tmp_path / "report.json"
    code, out, err = cli(
        "apply", manifest, "--parallelism", "1", "--report", report_file, "--output", "json"
    )
    assert code == 4
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report == json.loads(out)
    assert report["summary"]["submitted"] == 2
    assert report["stop_reason"].startswith("the state could not record a result")
    assert "Error: cannot append to the journal: No space left on device" in err
    assert requests_mock.call_count == 3  # the third model's answer could not be recorded
