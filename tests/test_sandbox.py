"""The sandbox over real HTTP on 127.0.0.1 (port 0): endpoints, the published request
description and its envelopes, the legacy envelopes, hostile bodies, faults, the request log,
and property tests that drive it with generated bodies."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsync.errors import UsageError
from modelsync.sandbox import (
    Sandbox,
    SandboxConfig,
    SandboxError,
    published_request,
    serve_forever,
)

KEY = "sandbox"
TIMEOUT = 5.0
LOAD_MODEL = "/api/v3/load_model"
MODEL_LIST = "/api/v4/dreambooth/model_list"
MODEL_RELOAD = "/api/v6/images/model_reload"
REPO = Path(__file__).resolve().parents[1]

# The published request schema, as API_NOTES.md states it (the facts the description must hold).
PUBLISHED_REQUIRED = (
    "key",
    "url",
    "model_id",
    "model_format",
    "model_category",
    "model_visibility",
    "model_name",
)
PUBLISHED_ENUMS = {
    "model_category": ("stable_diffusion", "stable_diffusion_xl", "flux", "z_image"),
    "model_subcategory": ("lora",),
    "model_format": ("diffusers", "safetensors", "ckpt"),
    "revision": ("fp16", "fp32"),
    "model_visibility": ("private", "public"),
    "force_load": ("yes", "no"),
    "hf_upload": ("yes", "no"),
}
HISTORICAL_CATEGORIES = (
    "controlnet",
    "lora",
    "embeddings",
    "vae",
    "flux_lora",
    "flux_embeddings",
    "flux_checkpoint",
)
OTHER_METHODS = ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")


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


@pytest.fixture
def legacy() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(load_seconds=60, legacy_errors=True)) as sb:
        yield sb


def post(sb: Sandbox, path: str, payload: Any, **kwargs: Any) -> requests.Response:
    return requests.post(sb.url + path, json=payload, timeout=TIMEOUT, **kwargs)


def load(sb: Sandbox, payload: Any) -> requests.Response:
    return requests.post(sb.load_model_url, json=payload, timeout=TIMEOUT)


def post_raw(sb: Sandbox, data: bytes, path: str = LOAD_MODEL) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(sb.url + path, data=data, headers=headers, timeout=TIMEOUT)


def published_error(status: int, message: str) -> dict[str, Any]:
    return {"status": "error", "message": message, "code": status}


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
    assert resp.json() == published_error(401, "Invalid API key")
    assert sandbox.models() == {}
    assert sandbox.stats()["auth_errors"] == 1


@pytest.mark.parametrize("key", [None, ""])
def test_load_model_missing_key_is_401_before_the_fields(sandbox: Sandbox, key: Any) -> None:
    # No key and bad fields: the key is checked first, as the published 401 says.
    payload = {"key": key, "model_category": "vae"} if key is not None else {"model_id": "x"}
    resp = load(sandbox, payload)
    assert resp.status_code == 401
    data = resp.json()
    assert set(data) == {"status", "message", "code"}
    assert (data["status"], data["code"]) == ("error", 401)
    assert data["message"].startswith("Invalid API key: no key was sent;")
    assert sandbox.stats()["auth_errors"] == 1


# ------------------------------------------------------------ the published request


def test_description_states_the_published_facts() -> None:
    described = published_request()
    document = described.document
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert tuple(document["required"]) == PUBLISHED_REQUIRED
    assert document["additionalProperties"] is False
    assert set(document["properties"]) == {*PUBLISHED_REQUIRED, *PUBLISHED_ENUMS, "model_image"}
    assert all(spec["type"] == "string" for spec in document["properties"].values())
    assert described.enums == PUBLISHED_ENUMS
    assert document["properties"]["model_image"]["format"] == "uri"
    assert document["properties"]["revision"]["default"] == "fp16"
    assert document["properties"]["force_load"]["default"] == "yes"
    assert described.published_since == "2026-01-05"
    assert [entry["date"] for entry in document["x-history"]] == [
        "2023",
        "2025-06",
        "2025-12-09",
        "2026-01-05",
    ]
    assert tuple(described.historical["model_category"]) == HISTORICAL_CATEGORIES
    assert "vae" in document["x-history"][0]["change"]
    # The sandbox's choice for the historical values is written in the description itself.
    assert any("Historical values" in line for line in document["x-sandbox-reading"])


def test_sandbox_never_imports_the_manifest_or_its_schema() -> None:
    code = (
        "import sys, modelsync.sandbox as s; s.published_request(); "
        "print([m for m in sys.modules if m.startswith('modelsync.manifest')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
    for path in (REPO / "modelsync" / "sandbox").iterdir():
        if path.suffix in (".py", ".json"):
            text = path.read_text(encoding="utf-8")
            assert "modelsync.manifest" not in text, path
            assert "manifest.schema.json" not in text, path


def test_load_model_without_model_visibility_is_400(sandbox: Sandbox) -> None:
    payload = body()
    del payload["model_visibility"]
    resp = load(sandbox, payload)
    assert resp.status_code == 400
    assert resp.json() == published_error(400, "The model visibility field is required.")
    assert sandbox.models() == {}
    assert sandbox.stats()["validation_errors"] == 1


@pytest.mark.parametrize("category", HISTORICAL_CATEGORIES)
def test_load_model_historical_category_is_400(sandbox: Sandbox, category: str) -> None:
    resp = load(sandbox, body(model_category=category))
    assert resp.status_code == 400
    data = resp.json()
    assert (data["status"], data["code"]) == ("error", 400)
    assert data["message"].startswith(
        f"The selected model category is invalid: '{category}' is not in the published "
        "schema (unchanged since 2026-01-05); it was listed "
    )
    assert sandbox.models() == {}


def test_load_model_vae_names_its_history_and_lora_its_migration(sandbox: Sandbox) -> None:
    vae = load(sandbox, body(model_category="vae")).json()["message"]
    assert "only in the 2023 stablediffusionapi.com docs" in vae
    lora = load(sandbox, body(model_category="lora")).json()["message"]
    assert lora.endswith("send the base model's category with model_subcategory 'lora'.")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model_subcategory": "AAA"},
            "The selected model subcategory is invalid (one of: lora).",
        ),
        ({"model_subcategory": None}, "The model subcategory field must be a string."),
        ({"model_image": None}, "The model image field must be a string."),
        ({"model_image": "not a uri"}, "The model image field must be a valid URI."),
        ({"model_image": ""}, "The model image field must be a valid URI."),
        (
            {"model_format": "safetensor"},
            "The selected model format is invalid (one of: diffusers, safetensors, ckpt).",
        ),
        ({"force_load": True}, "The force load field must be a string."),
        ({"model_name": "  "}, "The model name field is required."),
        ({"model_name": None}, "The model name field is required."),
        ({"model_id": 7}, "The model id field must be a string."),
        ({"tags": ["x"]}, "The tags field is not allowed."),
    ],
)
def test_load_model_bad_parameters_are_400(
    sandbox: Sandbox, overrides: dict[str, Any], message: str
) -> None:
    payload = {**body(), **overrides}
    resp = load(sandbox, payload)
    assert (resp.status_code, resp.json()) == (400, published_error(400, message))
    assert sandbox.models() == {}


def test_load_model_names_every_bad_field_in_one_message(sandbox: Sandbox) -> None:
    resp = load(sandbox, {"key": KEY, "model_id": "x", "model_format": "ckpt", "revision": "main"})
    assert resp.json() == published_error(
        400,
        # In the description's order.
        "The url field is required. The model category field is required. "
        "The model visibility field is required. The model name field is required. "
        "The selected revision is invalid (one of: fp16, fp32).",
    )


def test_load_model_many_unknown_fields_are_named_up_to_twenty(sandbox: Sandbox) -> None:
    payload = {**body(), **{f"extra_{i:03d}": i for i in range(500)}, "x" * 10_000: 1}
    resp = load(sandbox, payload)
    message = resp.json()["message"]
    assert resp.status_code == 400
    assert message.startswith("The extra 000 field is not allowed. The extra 001 field")
    assert message.endswith("(and 481 more errors)")
    assert len(message) < 2000


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, vs in PUBLISHED_ENUMS.items() for v in vs]
)
def test_load_model_accepts_each_published_enum_value(
    sandbox: Sandbox, field: str, value: str
) -> None:
    payload = body(**{field: value})
    if field == "model_format" and value == "diffusers":
        payload["url"] = "stabilityai/stable-diffusion-xl-base-1.0"
    resp = load(sandbox, payload)
    assert (resp.status_code, resp.json()) == (
        200,
        {"status": "success", "message": "model load started"},
    )
    assert sandbox.models()["majicmix"][field] == value


def test_load_model_accepts_every_published_field_at_once(sandbox: Sandbox) -> None:
    payload = body(
        model_category="z_image",
        model_subcategory="lora",
        model_image="https://cdn.example.com/a%20b.png?w=512#top",
        force_load="yes",
    )
    assert load(sandbox, payload).json()["status"] == "success"
    held = sandbox.models()["majicmix"]
    assert {k: held[k] for k in payload if k != "key"} == {
        k: v for k, v in payload.items() if k != "key"
    }


@pytest.mark.parametrize("data", [b"not json", b"", b'{"key": "sandbox"', b"[1, 2]", b"null"])
def test_load_model_body_not_a_json_object_is_400(sandbox: Sandbox, data: bytes) -> None:
    resp = post_raw(sandbox, data)
    assert resp.status_code == 400
    answer = resp.json()
    assert (answer["status"], answer["code"]) == ("error", 400)
    assert sandbox.stats()["bad_requests"] == 1


def test_unknown_path_is_404(sandbox: Sandbox) -> None:
    resp = post(sandbox, "/api/v3/text2img", {"key": KEY})
    assert resp.status_code == 404
    assert resp.json() == published_error(404, "Not found: /api/v3/text2img")
    assert requests.get(sandbox.url + "/nowhere", timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize("method", OTHER_METHODS)
@pytest.mark.parametrize("path", [LOAD_MODEL, MODEL_LIST, MODEL_RELOAD])
def test_other_methods_are_405_with_allow(sandbox: Sandbox, method: str, path: str) -> None:
    resp = requests.request(method, sandbox.url + path, timeout=TIMEOUT)
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST"
    if method == "HEAD":
        assert resp.content == b""
    else:
        assert resp.json() == published_error(405, f"Method {method} not allowed: use POST")
    assert sandbox.stats()["requests"] == 1


def test_a_405_reads_the_body_it_refuses_so_the_connection_stays_usable(
    sandbox: Sandbox,
) -> None:
    with requests.Session() as session:
        resp = session.put(sandbox.load_model_url, json=body(), timeout=TIMEOUT)
        assert resp.status_code == 405
        resp = session.post(sandbox.load_model_url, json=body(), timeout=TIMEOUT)
        assert resp.json()["status"] == "success"
    assert sandbox.stats()["connections"] == 1


def test_an_unknown_method_or_a_bad_request_line_is_answered_in_json(sandbox: Sandbox) -> None:
    port = int(sandbox.url.rsplit(":", 1)[1])
    for request, status in ((b"BREW /api/v3/load_model HTTP/1.1", 501), (b"garbage", 400)):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            conn.sendall(request + b"\r\nHost: x\r\n\r\n")
            answer = _read_all(conn)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert json.loads(payload)["code"] == status


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------- the legacy envelopes


def test_legacy_missing_key_is_200_with_messege(legacy: Sandbox) -> None:
    payload = body()
    del payload["key"]
    resp = load(legacy, payload)
    assert resp.status_code == 200
    data = resp.json()
    assert data["status"] == "error"
    assert data["messege"] == "Invalid Api Key"
    assert "tip" in data and "message" not in data
    assert legacy.models() == {}


def test_legacy_wrong_key_is_401_without_code(legacy: Sandbox) -> None:
    resp = load(legacy, body(key="wrong"))
    assert (resp.status_code, resp.json()) == (
        401,
        {"status": "error", "message": "Invalid API key"},
    )


def test_legacy_missing_fields_give_laravel_object_message_in_a_200(legacy: Sandbox) -> None:
    resp = load(legacy, {"key": KEY, "model_id": "x", "model_format": "ckpt"})
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "error",
        "message": {
            "url": ["The url field is required."],
            "model_category": ["The model category field is required."],
            "model_visibility": ["The model visibility field is required."],
            "model_name": ["The model name field is required."],
        },
    }
    assert legacy.stats()["validation_errors"] == 1


def test_legacy_applies_the_same_published_rules(legacy: Sandbox) -> None:
    payload = {**body(model_category="vae", force_load=True), "model_subcategory": None}
    resp = load(legacy, payload)
    assert resp.status_code == 200
    message = resp.json()["message"]
    assert list(message) == ["model_category", "model_subcategory", "force_load"]
    assert message["model_subcategory"] == ["The model subcategory field must be a string."]
    assert "'vae' is not in the published schema" in message["model_category"][0]
    assert legacy.models() == {}


def test_legacy_transport_errors_have_no_code(legacy: Sandbox) -> None:
    resp = post_raw(legacy, b"not json")
    assert (resp.status_code, resp.json()) == (
        400,
        {"status": "error", "message": "The request body is not valid JSON."},
    )
    resp = requests.get(legacy.load_model_url, timeout=TIMEOUT)
    assert (resp.status_code, resp.headers["Allow"]) == (405, "POST")
    assert resp.json() == {"status": "error", "message": "Method GET not allowed: use POST"}


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
    assert (resp.status_code, resp.json()) == (
        200,
        {"status": "error", "message": "Model id not found"},
    )
    load(sandbox, body())
    resp = post(sandbox, "/api/v4/dreambooth/model_reload", {"key": KEY, "model_id": "majicmix"})
    assert resp.json()["status"] == "success"
    assert sandbox.models()["majicmix"]["reloads"] == 1
    resp = post(sandbox, MODEL_RELOAD, {"key": KEY})
    assert resp.json() == published_error(400, "The model id field is required.")
    resp = post(sandbox, MODEL_RELOAD, {"key": KEY, "model_id": 3})
    assert resp.json() == published_error(400, "The model id field must be a string.")
    assert post(sandbox, MODEL_RELOAD, {"key": "wrong", "model_id": "x"}).status_code == 401


def test_legacy_model_reload_errors(legacy: Sandbox) -> None:
    resp = post(legacy, MODEL_RELOAD, {"key": KEY})
    assert (resp.status_code, resp.json()["message"]) == (
        200,
        {"model_id": ["The model id field is required."]},
    )


def test_model_list_needs_the_key(sandbox: Sandbox, legacy: Sandbox) -> None:
    assert post(sandbox, MODEL_LIST, {"key": "wrong"}).status_code == 401
    assert post(sandbox, MODEL_LIST, {}).json()["code"] == 401
    assert post(legacy, MODEL_LIST, {"key": "wrong"}).status_code == 401
    assert post(legacy, MODEL_LIST, {}).json()["messege"] == "Invalid Api Key"


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
        assert resp.status_code == 400
        assert "The x field is not allowed." in resp.json()["message"]
    entry = json.loads(log_path.read_text(encoding="utf-8"))
    assert entry["outcome"] == "validation_error"
    assert entry["body"]["key"] == "***"


# ------------------------------------------------------------------ hostile bodies

DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE = {
    "nested_100000_deep": (DEEP, "The request body is nested too deeply."),
    "nested_in_a_body": (
        b'{"key": "sandbox", "url": ' + DEEP + b"}",
        "The request body is nested too deeply.",
    ),
    "not_utf8": (
        b'{"key": "sandbox", "model_name": "caf\xe9"}',
        "The request body is not UTF-8 text.",
    ),
    "utf16": ('{"key": "sandbox"}'.encode("utf-16"), "The request body is not UTF-8 text."),
    "bom": (b'\xef\xbb\xbf{"key": "sandbox"}', "The request body is not valid JSON."),
    "nan": (b'{"key": "sandbox", "model_name": NaN}', "The request body is not valid JSON."),
    "huge_number": (b"1" * 5000, "The request body is not valid JSON."),
    "invalid_json": (b'{"key": "sandbox",, }', "The request body is not valid JSON."),
    "two_megabytes": (
        b'{"key": "' + b"k" * (2 * 1024 * 1024) + b'"}',
        f"Request body too large: {2 * 1024 * 1024 + 11} bytes (at most 1048576).",
    ),
}


@pytest.mark.parametrize("legacy_errors", [False, True])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_body_is_400_logged_once_and_the_server_goes_on(
    tmp_path: Path, name: str, legacy_errors: bool
) -> None:
    data, message = HOSTILE[name]
    log_path = tmp_path / "requests.jsonl"
    config = SandboxConfig(request_log=log_path, legacy_errors=legacy_errors)
    with Sandbox(config) as sb, requests.Session() as session:
        resp = session.post(sb.load_model_url, data=data, timeout=TIMEOUT)
        expected = {"status": "error", "message": message}
        if not legacy_errors:
            expected["code"] = 400
        assert (resp.status_code, resp.json()) == (400, expected)
        # The same kept-alive connection still serves a good request.
        assert session.post(sb.load_model_url, json=body(), timeout=TIMEOUT).status_code == 200
        stats = sb.stats()
    assert (stats["requests"], stats["bad_requests"], stats["internal_errors"]) == (2, 1, 0)
    assert stats["connections"] == 1
    entries = read_log(log_path)
    assert [(e["status"], e["outcome"]) for e in entries] == [
        (400, "too_large" if name == "two_megabytes" else "bad_json"),
        (200, "accepted"),
    ]
    assert "sandbox" not in json.dumps(entries)


def test_hostile_body_to_an_unknown_path_is_logged_once(tmp_path: Path) -> None:
    # The log parses what routing did not: a deep body must not break it there either.
    log_path = tmp_path / "requests.jsonl"
    with Sandbox(SandboxConfig(request_log=log_path)) as sb:
        assert post_raw(sb, DEEP, "/nowhere").status_code == 404
        assert post_raw(sb, b"\xff\xfe", "/nowhere").status_code == 404
        assert load(sb, body()).status_code == 200
        assert sb.stats()["internal_errors"] == 0
    assert [e["outcome"] for e in read_log(log_path)] == ["not_found", "not_found", "accepted"]


def _send_truncated(sb: Sandbox, declared: int, sent: bytes) -> None:
    """A client that announces ``declared`` bytes, sends ``sent`` and dies."""
    port = int(sb.url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    head = f"POST {LOAD_MODEL} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
    conn.sendall(head.encode() + sent)
    conn.close()


@pytest.mark.parametrize("declared", [1000, 2 * 1024 * 1024])
def test_truncated_body_is_logged_once_as_client_gone_not_as_a_request(
    tmp_path: Path, declared: int
) -> None:
    log_path = tmp_path / "requests.jsonl"
    with Sandbox(SandboxConfig(request_log=log_path)) as sb:
        _send_truncated(sb, declared, b'{"key": "sandbox", "model_id": "cut", "url": "ht')
        assert wait_until(lambda: sb.stats()["client_gone"] == 1)
        assert load(sb, body()).status_code == 200
        stats = sb.stats()
    assert (stats["requests"], stats["bad_requests"], stats["internal_errors"]) == (1, 0, 0)
    entries = read_log(log_path)
    assert entries[0] == {
        "time": entries[0]["time"],
        "path": LOAD_MODEL,
        "model_id": None,
        "body": None,
        "status": None,
        "outcome": "client_gone",
    }
    assert [e["outcome"] for e in entries] == ["client_gone", "accepted"]


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


# ------------------------------------------------------------------- property tests

ENVELOPE_STATUSES = {"success", "error", "processing", "failed"}
FIELD_NAMES = tuple(dict.fromkeys((*PUBLISHED_REQUIRED, *PUBLISHED_ENUMS, "model_image")))
PATHS = (LOAD_MODEL, "/api/v4/dreambooth/load_model", MODEL_RELOAD, MODEL_LIST)
# Hypothesis: bounded, with a deadline per example (each is one request over keep-alive).
PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=1000),
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
interesting_strings = st.sampled_from(
    [
        KEY,
        "",
        " ",
        "AAA",
        "https://img.example.com/a.png",
        *(v for values in PUBLISHED_ENUMS.values() for v in values),
        *HISTORICAL_CATEGORIES,
    ]
)
field_values = json_values | interesting_strings
field_dicts = st.dictionaries(
    st.sampled_from([*FIELD_NAMES, "extra", "messege"]), field_values, max_size=12
)
# A good body with some fields dropped and some replaced: reaches every check past the key.
near_valid = st.builds(
    lambda drop, overrides: (
        {k: v for k, v in {**body(), **overrides}.items() if k not in drop and k != "key"}
        | {"key": KEY}
    ),
    st.sets(st.sampled_from(FIELD_NAMES), max_size=3),
    st.dictionaries(st.sampled_from([*FIELD_NAMES, "extra"]), field_values, max_size=3),
)
payloads = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    field_dicts.map(lambda v: json.dumps(v).encode()),
    near_valid.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)


def assert_enveloped(resp: requests.Response, path: str, legacy: bool) -> None:
    """No 5xx; a JSON answer in the documented envelope of its style."""
    assert resp.status_code < 500, resp.text
    data = resp.json()
    if isinstance(data, list):
        assert (path, resp.status_code) == (MODEL_LIST, 200)
        return
    assert isinstance(data, dict), data
    assert data["status"] in ENVELOPE_STATUSES, data
    if resp.status_code == 429:
        assert isinstance(data["retry_after"], int)
    if legacy:
        assert "message" in data or "messege" in data, data
        assert "code" not in data
        return
    assert isinstance(data["message"], str), data
    assert "messege" not in data
    if resp.status_code >= 400 and resp.status_code != 429:
        assert (data["status"], data["code"]) == ("error", resp.status_code)
    else:
        assert "code" not in data


@pytest.mark.slow
@pytest.mark.parametrize("legacy_errors", [False, True])
def test_generated_bodies_never_get_a_5xx_and_always_an_envelope(
    tmp_path: Path, legacy_errors: bool
) -> None:
    log_path = tmp_path / "requests.jsonl"
    config = SandboxConfig(legacy_errors=legacy_errors, request_log=log_path)
    sent = 0
    with Sandbox(config) as sb, requests.Session() as session:

        @PROPERTY_SETTINGS
        @given(payload=payloads, path=st.sampled_from(PATHS))
        def run(payload: bytes, path: str) -> None:
            nonlocal sent
            headers = {"Content-Type": "application/json"}
            resp = session.post(sb.url + path, data=payload, headers=headers, timeout=TIMEOUT)
            sent += 1
            assert_enveloped(resp, path, legacy_errors)

        run()
        stats = sb.stats()
    assert sent >= PROPERTY_SETTINGS.max_examples
    assert stats["internal_errors"] == 0
    assert stats["requests"] == sent
    assert len(read_log(log_path)) == sent


non_blank = st.text(min_size=1, max_size=30).filter(str.strip)
uris = st.from_regex(
    r"https://[a-z]{1,12}\.example/[A-Za-z0-9._~/%-]{0,20}", fullmatch=True
).filter(lambda u: "%" not in u)
valid_bodies = st.fixed_dictionaries(
    {
        "url": non_blank,
        "model_id": non_blank,
        "model_name": non_blank,
        **{name: st.sampled_from(values) for name, values in PUBLISHED_ENUMS.items()},
    },
    optional={"model_image": uris},
)


@pytest.mark.slow
def test_every_body_the_published_schema_allows_is_accepted() -> None:
    with Sandbox(SandboxConfig()) as sb, requests.Session() as session:

        @PROPERTY_SETTINGS
        @given(valid_bodies)
        def run(fields: dict[str, str]) -> None:
            # force_load "no" would meet an earlier example's model: a fresh id each time.
            payload = {**fields, "key": KEY, "model_id": f"{fields['model_id']}-{len(sb.models())}"}
            resp = session.post(sb.load_model_url, json=payload, timeout=TIMEOUT)
            assert (resp.status_code, resp.json()) == (
                200,
                {"status": "success", "message": "model load started"},
            ), payload

        run()


@pytest.mark.slow
@settings(max_examples=300, deadline=timedelta(milliseconds=200))
@given(st.one_of(field_dicts, near_valid))
def test_the_sandbox_check_agrees_with_jsonschema_on_the_description(
    payload: dict[str, Any],
) -> None:
    described = published_request()
    errors = described.check(payload)
    valid = jsonschema.Draft202012Validator(described.document).is_valid(payload)
    # jsonschema treats `format` as an annotation; the sandbox checks the URI.
    uri_only = errors == {"model_image": ["The model image field must be a valid URI."]}
    assert valid == (not errors or uri_only), errors
