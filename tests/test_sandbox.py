from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from modelsync.errors import UsageError
from modelsync.sandbox import Sandbox, SandboxConfig, SandboxError, serve_forever

KEY = "sandbox"
TIMEOUT = 5.0
MODEL_LIST = "/api/v4/dreambooth/model_list"
MODEL_RELOAD = "/api/v6/images/model_reload"


def body(model_id: str = "majicmix", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": KEY,
        "url": "https://civitai.com/api/download/models/132760",
        "model_id": model_id,
        "model_format": "safetensors",
        "model_category": "stable_diffusion",
        "model_name": "MajicMix Realistic",
        "revision": "fp16",
        "model_visibility": "private",
        "hf_upload": "no",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(load_seconds=60)) as sb:
        yield sb


def post(sb: Sandbox, path: str, payload: Any, **kwargs: Any) -> requests.Response:
    return requests.post(sb.url + path, json=payload, timeout=TIMEOUT, **kwargs)


def load(sb: Sandbox, payload: Any) -> requests.Response:
    return requests.post(sb.load_model_url, json=payload, timeout=TIMEOUT)


def wait_until(predicate: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_load_model_success_then_loading_then_ready() -> None:
    with Sandbox(SandboxConfig(load_seconds=0.3)) as sb:
        resp = load(sb, body())
        assert resp.status_code == 200
        assert resp.json() == {"status": "success", "message": "model load started"}

        listing = post(sb, MODEL_LIST, {"key": KEY}).json()
        assert [m["model_id"] for m in listing] == ["majicmix"]
        assert listing[0]["status"] == "loading"
        assert listing[0]["model_name"] == "MajicMix Realistic"
        assert set(listing[0]) >= {"created_at", "description", "screenshots"}

        def ready() -> bool:
            return bool(post(sb, MODEL_LIST, {"key": KEY}).json()[0]["status"] == "model_ready")

        assert wait_until(ready)
        held = sb.models()["majicmix"]
        assert held["status"] == "model_ready"
        assert held["loads"] == 1
        assert "key" not in held
        assert sb.stats()["accepted"] == 1


def test_urls(sandbox: Sandbox) -> None:
    assert sandbox.url.startswith("http://127.0.0.1:")
    assert sandbox.load_model_url == sandbox.url + "/api/v3/load_model"


def test_dreambooth_load_model_path_is_accepted(sandbox: Sandbox) -> None:
    resp = post(sandbox, "/api/v4/dreambooth/load_model", body())
    assert resp.json()["status"] == "success"


def test_load_model_wrong_key_is_401(sandbox: Sandbox) -> None:
    resp = load(sandbox, body(key="not-the-key"))
    assert resp.status_code == 401
    assert resp.json() == {"status": "error", "message": "Invalid API key"}
    assert sandbox.models() == {}
    assert sandbox.stats()["auth_errors"] == 1


def test_load_model_missing_key_is_200_with_messege(sandbox: Sandbox) -> None:
    payload = body()
    del payload["key"]
    resp = load(sandbox, payload)
    assert resp.status_code == 200
    data = resp.json()
    assert data["status"] == "error"
    assert data["messege"] == "Invalid Api Key"
    assert "tip" in data and "message" not in data
    assert sandbox.models() == {}


def test_load_model_missing_fields_give_laravel_object_message(sandbox: Sandbox) -> None:
    resp = load(sandbox, {"key": KEY, "model_id": "x", "model_format": "ckpt"})
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "error",
        "message": {
            "url": ["The url field is required."],
            "model_category": ["The model category field is required."],
            "model_name": ["The model name field is required."],
        },
    }
    assert sandbox.stats()["validation_errors"] == 1


def test_load_model_bad_enum_values(sandbox: Sandbox) -> None:
    resp = load(sandbox, body(model_format="safetensor", force_load=True, revision="main"))
    assert resp.status_code == 200
    assert resp.json()["message"] == {
        "model_format": ["The selected model format is invalid."],
        "force_load": ["The selected force load is invalid."],
        "revision": ["The selected revision is invalid."],
    }
    assert sandbox.models() == {}


def test_load_model_newer_categories_and_null_subcategory(sandbox: Sandbox) -> None:
    resp = load(sandbox, body(model_category="flux", model_subcategory=None))
    assert resp.json()["status"] == "success"
    resp = load(sandbox, body("z", model_category="z_image", model_subcategory="lora"))
    assert resp.json()["status"] == "success"
    resp = load(sandbox, body("bad", model_subcategory=3))
    assert resp.json()["message"] == {
        "model_subcategory": ["The model subcategory must be a string."]
    }


@pytest.mark.parametrize("data", [b"not json", b"", b'{"key": "sandbox"', b"[1, 2]"])
def test_load_model_body_not_a_json_object_is_400(sandbox: Sandbox, data: bytes) -> None:
    resp = requests.post(
        sandbox.load_model_url,
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 400
    assert resp.json()["status"] == "error"


def test_unknown_path_is_404_and_get_is_405(sandbox: Sandbox) -> None:
    resp = post(sandbox, "/api/v3/text2img", {"key": KEY})
    assert resp.status_code == 404
    assert resp.json()["status"] == "error"
    resp = requests.get(sandbox.load_model_url, timeout=TIMEOUT)
    assert resp.status_code == 405
    assert resp.json()["status"] == "error"


def test_existing_model_with_force_load_no_is_refused(sandbox: Sandbox) -> None:
    assert load(sandbox, body(force_load="no")).json()["status"] == "success"
    resp = load(sandbox, body(force_load="no", model_name="Changed"))
    assert resp.status_code == 200
    assert resp.json() == {"status": "error", "message": "Model id already exists"}
    held = sandbox.models()["majicmix"]
    assert held["loads"] == 1
    assert held["model_name"] == "MajicMix Realistic"
    assert sandbox.stats()["already_exists"] == 1


def test_existing_model_with_force_load_yes_loads_again() -> None:
    with Sandbox(SandboxConfig(load_seconds=0.05)) as sb:
        assert load(sb, body(force_load="no")).json()["status"] == "success"
        assert wait_until(lambda: sb.models()["majicmix"]["status"] == "model_ready")
        # force_load absent means "yes", the API's default.
        resp = load(sb, body(model_name="Changed", revision="fp32"))
        assert resp.json() == {"status": "success", "message": "model load started"}
        held = sb.models()["majicmix"]
        assert held["loads"] == 2
        assert held["model_name"] == "Changed"
        assert held["revision"] == "fp32"
        assert held["status"] == "loading"


def test_model_reload(sandbox: Sandbox) -> None:
    resp = post(sandbox, MODEL_RELOAD, {"key": KEY, "model_id": "nope"})
    assert resp.json() == {"status": "error", "message": "Model id not found"}
    load(sandbox, body())
    resp = post(sandbox, "/api/v4/dreambooth/model_reload", {"key": KEY, "model_id": "majicmix"})
    assert resp.json()["status"] == "success"
    assert sandbox.models()["majicmix"]["reloads"] == 1
    resp = post(sandbox, MODEL_RELOAD, {"key": KEY})
    assert resp.json()["message"] == {"model_id": ["The model id field is required."]}
    assert post(sandbox, MODEL_RELOAD, {"key": "wrong", "model_id": "x"}).status_code == 401


def test_model_list_needs_the_key(sandbox: Sandbox) -> None:
    assert post(sandbox, MODEL_LIST, {"key": "wrong"}).status_code == 401
    assert post(sandbox, MODEL_LIST, {}).json()["messege"] == "Invalid Api Key"


def _parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(i) for i in range(n) on n threads started together; results in order."""
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait(timeout=TIMEOUT)
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return results


def test_more_requests_in_flight_than_max_queued_get_429(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    config = SandboxConfig(latency_ms=300, max_queued=2, retry_after=3, request_log=log_path)
    with Sandbox(config) as sb:
        responses = _parallel(8, lambda i: load(sb, body(f"m{i}")))
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes
        assert 200 in codes
        assert codes.count(200) <= 2
        rejected = [r.json() for r in responses if r.status_code == 429]
        assert rejected[0] == {
            "status": "error",
            "message": "Rate limit exceeded. Maximum 2 queued requests allowed.",
            "retry_after": 3,
        }
        stats = sb.stats()
        assert stats["rejected_429"] == len(rejected)
        assert len(sb.models()) == codes.count(200)
        assert stats["in_flight"] == 0
    entries = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    limited = [e for e in entries if e["outcome"] == "rate_limited"]
    assert len(entries) == 8
    assert len(limited) == len(rejected)
    assert all(e["status"] == 429 and e["body"]["key"] == "***" for e in limited)


def test_fail_rate_one_gives_5xx_and_records_nothing() -> None:
    with Sandbox(SandboxConfig(fail_rate=1.0, seed=1)) as sb:
        for i in range(6):
            resp = load(sb, body(f"m{i}"))
            assert resp.status_code in (500, 503)
            assert resp.json()["status"] == "error"
        assert sb.models() == {}
        assert sb.stats()["faults_5xx"] == 6


def test_garbage_rate_one_gives_unreadable_200s_and_records_nothing() -> None:
    with Sandbox(SandboxConfig(garbage_rate=1.0, seed=3)) as sb:
        bodies = set()
        with requests.Session() as session:
            for i in range(12):
                resp = session.post(sb.load_model_url, json=body(f"m{i}"), timeout=TIMEOUT)
                assert resp.status_code == 200
                with pytest.raises(ValueError):
                    json.loads(resp.content)
                bodies.add(resp.content)
        assert b"" in bodies
        assert b'{"status":"succ' in bodies
        assert any(b.startswith(b"<!DOCTYPE html>") for b in bodies)
        assert sb.models() == {}
        assert sb.stats()["garbage"] == 12


def test_reset_rate_one_drops_the_connection_after_recording_the_model() -> None:
    with Sandbox(SandboxConfig(reset_rate=1.0)) as sb:
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            load(sb, body())
        assert time.monotonic() - started < 2
        assert sb.models()["majicmix"]["loads"] == 1
        assert sb.stats()["resets"] == 1
        # A retry of what already reached the server meets the model it created.
        with pytest.raises(requests.ConnectionError):
            load(sb, body(force_load="yes"))
        assert sb.models()["majicmix"]["loads"] == 2


def _fault_sequence(seed: int) -> tuple[list[str], dict[str, int]]:
    config = SandboxConfig(fail_rate=0.3, reset_rate=0.2, garbage_rate=0.2, seed=seed)
    outcomes = []
    with Sandbox(config) as sb:
        for i in range(20):
            try:
                resp = load(sb, body(f"m{i}"))
            except requests.ConnectionError:
                outcomes.append("reset")
                continue
            try:
                outcomes.append(f"{resp.status_code}:{resp.json()['status']}")
            except ValueError:
                outcomes.append(f"{resp.status_code}:garbage")
        return outcomes, sb.stats()


def test_seed_gives_a_deterministic_fault_sequence() -> None:
    first, first_stats = _fault_sequence(seed=1234)
    second, second_stats = _fault_sequence(seed=1234)
    assert first == second
    keys = ("accepted", "faults_5xx", "resets", "garbage")
    assert [first_stats[k] for k in keys] == [second_stats[k] for k in keys]
    # The mix actually exercises every kind of fault.
    assert {"reset", "200:success", "200:garbage"} <= set(first)
    assert any(o.startswith("50") for o in first)


def test_request_log_masks_the_key(tmp_path: Path) -> None:
    canary = "canary-key-7f3a9c1e"
    wrong = "wrong-canary-55d1"
    token = "civitai-token-canary-91ab"
    log_path = tmp_path / "requests.jsonl"
    config = SandboxConfig(api_key=canary, request_log=log_path)
    with Sandbox(config) as sb:
        url = f"https://civitai.com/api/download/models/1?type=Model&token={token}"
        good = body(key=canary, url=url, model_name=f"has {canary} inside")
        assert load(sb, good).json()["status"] == "success"
        assert load(sb, body(key=wrong)).status_code == 401
        raw = f'{{"key": "{canary}", "url": '.encode()
        resp = requests.post(sb.load_model_url, data=raw, timeout=TIMEOUT)
        assert resp.status_code == 400
        assert post(sb, MODEL_LIST, {"key": canary}).status_code == 200
        assert post(sb, "/nowhere", {"key": canary}).status_code == 404
    text = log_path.read_text(encoding="utf-8")
    assert canary not in text
    assert wrong not in text
    assert token not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(e["status"], e["outcome"]) for e in lines] == [
        (200, "accepted"),
        (401, "auth_invalid"),
        (400, "bad_json"),
        (200, "listed"),
        (404, "not_found"),
    ]
    first = lines[0]
    assert set(first) == {"time", "path", "model_id", "body", "status", "outcome"}
    assert first["path"] == "/api/v3/load_model"
    assert first["model_id"] == "majicmix"
    assert first["body"]["key"] == "***"
    assert first["body"]["model_name"] == "has *** inside"
    assert first["body"]["url"].endswith("&token=***")
    assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600


def test_request_log_records_a_reset_without_status(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    with (
        Sandbox(SandboxConfig(reset_rate=1.0, request_log=log_path)) as sb,
        pytest.raises(requests.ConnectionError),
    ):
        load(sb, body())
    entry = json.loads(log_path.read_text(encoding="utf-8"))
    assert entry["status"] is None
    assert entry["outcome"] == "reset"
    assert entry["model_id"] == "majicmix"


def test_request_log_masks_a_short_key_only_where_it_is_the_whole_value(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    with Sandbox(SandboxConfig(api_key="ab", request_log=log_path)) as sb:
        assert load(sb, body(key="ab", model_name="ab", model_id="tabby")).status_code == 200
    entry = json.loads(log_path.read_text(encoding="utf-8"))
    assert entry["body"]["key"] == "***"
    assert entry["body"]["model_name"] == "***"
    # Searched in free text, a two-letter key would mask ordinary words.
    assert entry["model_id"] == "tabby"


def test_request_log_survives_a_deeply_nested_body(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    depth = 900  # json.loads parses it; a recursive walk of it would not survive
    data = b'{"key": "sandbox", "x": ' + b"[" * depth + b"]" * depth + b"}"
    with Sandbox(SandboxConfig(request_log=log_path)) as sb:
        resp = requests.post(sb.load_model_url, data=data, timeout=TIMEOUT)
        assert resp.status_code == 200
        assert resp.json()["status"] == "error"
    entry = json.loads(log_path.read_text(encoding="utf-8"))
    assert entry["outcome"] == "validation_error"
    assert entry["body"]["key"] == "***"


def test_latency_overlaps_across_parallel_clients() -> None:
    with Sandbox(SandboxConfig(latency_ms=100)) as sb:

        def two_requests(i: int) -> list[int]:
            with requests.Session() as session:
                return [
                    session.post(
                        sb.load_model_url, json=body(f"m{i}-{j}"), timeout=TIMEOUT
                    ).status_code
                    for j in range(2)
                ]

        started = time.monotonic()
        results = _parallel(8, two_requests)
        elapsed = time.monotonic() - started
        assert results == [[200, 200]] * 8
        # Ideal is 16 x 100 ms / 8 = 0.2 s; serialized it would be 1.6 s.
        assert 0.2 <= elapsed < 1.2
        stats = sb.stats()
        assert stats["accepted"] == 16
        assert stats["max_in_flight"] > 1
        # Keep-alive: each client session reused one connection.
        assert stats["connections"] == 8


def test_stop_closes_kept_alive_connections() -> None:
    sb = Sandbox(SandboxConfig())
    sb.start()
    with requests.Session() as session:
        assert session.post(sb.load_model_url, json=body(), timeout=TIMEOUT).status_code == 200
        url = sb.load_model_url
        sb.stop()
        sb.stop()  # idempotent
        with pytest.raises(requests.ConnectionError):
            session.post(url, json=body(), timeout=TIMEOUT)


def test_start_on_a_taken_port_is_a_sandbox_error(sandbox: Sandbox) -> None:
    port = int(sandbox.url.rsplit(":", 1)[1])
    with pytest.raises(SandboxError, match="cannot listen"):
        Sandbox(SandboxConfig(port=port)).start()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": 1.5},
        {"fail_rate": 0.6, "reset_rate": 0.6},
        {"max_queued": 0},
        {"latency_ms": -1},
        {"port": 70000},
        {"api_key": ""},
    ],
)
def test_config_rejects_impossible_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="sandbox:"):
        SandboxConfig(**kwargs)


def test_serve_forever_stops_on_sigterm_and_restores_handlers() -> None:
    seen: dict[str, Any] = {}
    before = signal.getsignal(signal.SIGTERM)

    def ready(sb: Sandbox) -> None:
        seen["url"] = sb.load_model_url
        seen["status"] = load(sb, body()).status_code
        os.kill(os.getpid(), signal.SIGTERM)

    started = time.monotonic()
    serve_forever(SandboxConfig(), ready=ready)
    assert time.monotonic() - started < 3
    assert seen["status"] == 200
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(requests.ConnectionError):
        requests.post(seen["url"], json=body(), timeout=TIMEOUT)
