"""Tests for modelsync.api: classification, the retry loop, redirects, secrets.

Every HTTP answer comes from requests-mock; time is a fake clock and sleeping only
records the wait, so no test waits for real.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
import requests
import requests_mock as rm
import urllib3
from requests.adapters import HTTPAdapter

from modelsync import redact
from modelsync.api.envelope import MAX_REDIRECTS, Verdict, classify, parse_retry_after
from modelsync.api.modelslab import ModelsLab as LoadModelClient
from modelsync.api.retry import CallResult
from tests.helpers import ENDPOINT, EdgeRandom, FakeClock
from tests.helpers import make_client as new_client

OTHER_HOST = "https://evil.test/api/v3/load_model"
KEY = "test-key-0123456789"
WALL = 1_800_000_000.0  # the fake wall clock, epoch seconds
BODY = {
    "model_id": "majicmix-realistic",
    "url": "https://civitai.com/api/download/models/132760",
    "model_format": "safetensors",
    "model_category": "stable_diffusion",
    "model_name": "MajicMix Realistic",
    "force_load": "no",
}
OK = {"status": "success", "message": "model load started"}
HINT = (
    "model id 'majicmix-realistic' already exists on the account and modelsync did not put "
    "it there: not replaced"
)


class RecordingGate:
    def __init__(self, before_acquire: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._before_acquire = before_acquire

    def acquire(self) -> None:
        self.calls.append(("acquire",))
        if self._before_acquire is not None:
            self._before_acquire()

    def release(self, verdict_kind: str, http_status: int | None, pacing: bool = False) -> None:
        self.calls.append(("release", verdict_kind, http_status, pacing)[: 4 if pacing else 3])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(clock: FakeClock) -> Callable[..., LoadModelClient]:
    def make(**overrides: Any) -> LoadModelClient:
        options: dict[str, Any] = {
            "sleep": clock.sleep,
            "clock": clock,
            "wall_clock": lambda: WALL,
            "rng": random.Random(1234),
        }
        options.update(overrides)
        key = options.pop("api_key", KEY)
        return new_client(ENDPOINT, key, **options)

    return make


def html(text: str = "<!DOCTYPE html><html><body>Bad gateway</body></html>") -> dict[str, Any]:
    return {"text": text, "headers": {"Content-Type": "text/html"}}


# ------------------------------------------------------------ the classification table

# (id, status, response kwargs for requests-mock, expected kind, expected message)
TABLE: list[tuple[str, int, dict[str, Any], str, str]] = [
    ("success", 200, {"json": OK}, "submitted", "model load started"),
    (
        "processing",
        200,
        {"json": {"status": "processing", "message": "model is loading", "eta": 120}},
        "submitted",
        "model is loading",
    ),
    (
        "401",
        401,
        {"json": {"status": "error", "message": "Invalid API key"}},
        "auth",
        "Invalid API key",
    ),
    ("401 no body", 401, {"text": ""}, "auth", "HTTP 401 Unauthorized: the API key was refused"),
    (
        "403",
        403,
        {"json": {"status": "error", "message": "Feature not available on your plan"}},
        "auth",
        "Feature not available on your plan",
    ),
    (
        "200 invalid api key",
        200,
        {"json": {"status": "error", "message": "Invalid Api Key", "tip": "see your dashboard"}},
        "auth",
        "Invalid Api Key (tip: see your dashboard)",
    ),
    (
        "402",
        402,
        {
            "json": {
                "status": "error",
                "message": "Insufficient credits. Please add more credits to continue.",
            }
        },
        "account",
        "Insufficient credits. Please add more credits to continue.",
    ),
    (
        "200 insufficient credits",
        200,
        {"json": {"status": "error", "message": "Insufficient credits"}},
        "account",
        "Insufficient credits",
    ),
    (
        "200 model credit",
        200,
        {"json": {"status": "error", "message": "Buy private model credit to continue"}},
        "account",
        "Buy private model credit to continue",
    ),
    (
        "429",
        429,
        {
            "json": {
                "status": "error",
                "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                "retry_after": 30,
            }
        },
        "retryable",
        "Rate limit exceeded. Maximum 5 queued requests allowed.",
    ),
    ("500 html", 500, html(), "retryable", "HTTP 500 Internal Server Error"),
    (
        "503 json",
        503,
        {"json": {"status": "error", "message": "Service temporarily unavailable"}},
        "retryable",
        "Service temporarily unavailable",
    ),
    (
        "200 failed try again",
        200,
        {"json": {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""}},
        "retryable",
        "Failed, Try Again",
    ),
    (
        "200 spam filter",
        200,
        {
            "json": {
                "status": "error",
                "message": "Rate limit exceeded",
                "tips": "you are sending same request multiple times, spam filter is enabled, "
                "please wait for 30 seconds and try again",
            }
        },
        "retryable",
        "Rate limit exceeded (tip: you are sending same request multiple times, spam filter "
        "is enabled, please wait for 30 seconds and try again)",
    ),
    (
        "400",
        400,
        {"json": {"status": "error", "message": "The model format is invalid."}},
        "failed",
        "The model format is invalid.",
    ),
    ("404 no body", 404, {"text": ""}, "failed", "HTTP 404 Not Found"),
    (
        "200 field errors",
        200,
        {
            "json": {
                "status": "error",
                "message": {
                    "url": ["The url field is required."],
                    "model_id": ["The model id field is required.", "It must be a string."],
                },
            }
        },
        "failed",
        "url: The url field is required.; "
        "model_id: The model id field is required. It must be a string.",
    ),
    (
        "200 messege spelling",
        200,
        {"json": {"status": "error", "messege": "Model id not found"}},
        "failed",
        "Model id not found",
    ),
    (
        "200 error without message",
        200,
        {"json": {"status": "error"}},
        "failed",
        "the server answered status 'error'",
    ),
    (
        "200 html page",
        200,
        html("<!DOCTYPE html>\n<html>  <head><title>Just a moment...</title></head></html>"),
        "retryable",
        "unreadable answer (HTTP 200 OK): not JSON: "
        "'<!DOCTYPE html> <html> <head><title>Just a moment...</title></head></html>'",
    ),
    (
        "200 empty",
        200,
        {"text": ""},
        "retryable",
        "unreadable answer (HTTP 200 OK): empty body",
    ),
    (
        "200 cut short",
        200,
        {"text": '{"status": "success", "mess'},
        "retryable",
        "unreadable answer (HTTP 200 OK): invalid JSON (the body was cut short?)",
    ),
    (
        "200 json list",
        200,
        {"json": [1, 2]},
        "retryable",
        "unreadable answer (HTTP 200 OK): JSON list, not an object",
    ),
    (
        "200 no status",
        200,
        {"json": {"message": "model load started"}},
        "retryable",
        "unreadable answer (HTTP 200 OK): no 'status' field",
    ),
    (
        "200 unknown status",
        200,
        {"json": {"status": "queued"}},
        "retryable",
        "unexpected answer (HTTP 200 OK): status 'queued'",
    ),
    (
        "301",
        301,
        {"headers": {"Location": "https://modelslab.com/api/v3/load_model"}},
        "redirect",
        "the endpoint moved (HTTP 301 Moved Permanently) to "
        "https://modelslab.com/api/v3/load_model: update target.endpoint / --endpoint to "
        "https://modelslab.com/api/v3/load_model",
    ),
    (
        "302 relative",
        302,
        {"headers": {"Location": "/api/v4/load_model"}},
        "redirect",
        "the endpoint moved (HTTP 302 Found) to https://api.test/api/v4/load_model: "
        "update target.endpoint / --endpoint to https://api.test/api/v4/load_model",
    ),
    (
        "303",
        303,
        {"headers": {"Location": "https://api.test/done"}},
        "redirect",
        "the endpoint moved (HTTP 303 See Other) to https://api.test/done: "
        "update target.endpoint / --endpoint to https://api.test/done",
    ),
    (
        "307 without location",
        307,
        {},
        "redirect",
        "HTTP 307 Temporary Redirect without a Location header: check target.endpoint / --endpoint",
    ),
]


@pytest.mark.parametrize(
    ("status", "reply", "kind", "message"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_submit_classifies_each_answer(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    status: int,
    reply: dict[str, Any],
    kind: str,
    message: str,
) -> None:
    # The answer under test first, then a success: a retryable answer shows up
    # in on_retry and leads to a second attempt; any other ends the submit.
    requests_mock.post(ENDPOINT, [{"status_code": status, **reply}, {"json": OK}])
    seen: list[Verdict] = []
    result = make_client(max_attempts=2).load_model(
        BODY, model_id="majicmix-realistic", on_retry=lambda n, v, w: seen.append(v)
    )
    if kind == "retryable":
        assert [(v.kind, v.http_status, v.message) for v in seen] == [
            ("retryable", status, message)
        ]
        assert result.outcome == "submitted"
        assert result.attempts == 2
        assert requests_mock.call_count == 2
    else:
        assert seen == []
        assert (result.outcome, result.http_status, result.message) == (kind, status, message)
        assert result.attempts == 1
        assert requests_mock.call_count == 1


def test_classify_keeps_the_redacted_json_response() -> None:
    body = json.dumps({"status": "processing", "message": "loading", "eta": 12}).encode()
    verdict = classify(200, body, {})
    assert verdict == Verdict("submitted", 200, "loading", None, {**json.loads(body)})


def test_classify_non_object_json_has_no_response() -> None:
    assert classify(200, b"[1]", {}).response is None
    assert classify(200, b"<html>", {}).response is None


def test_classify_reads_retry_after_header_in_any_case() -> None:
    verdict = classify(503, b"", {"retry-after": "7"})
    assert (verdict.kind, verdict.retry_after) == ("retryable", 7.0)


def test_classify_http_date_uses_now() -> None:
    date = email.utils.formatdate(WALL + 90, usegmt=True)
    assert classify(429, b"", {"Retry-After": date}, now=WALL).retry_after == 90.0


def test_classify_auth_message_wins_over_status_5xx() -> None:
    body = b'{"status":"error","message":"Invalid Api Key"}'
    assert classify(500, body, {}).kind == "auth"


def test_classify_already_exists_is_not_retried_even_if_it_says_try_again() -> None:
    body = b'{"status":"error","message":"Model already exists, try again later"}'
    assert classify(200, body, {}).kind == "failed"


def test_classify_deeply_nested_json_is_unreadable_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    verdict = classify(200, body, {})
    assert (verdict.kind, verdict.message) == (
        "retryable",
        "unreadable answer (HTTP 200 OK): JSON nested too deeply",
    )


def test_classify_clips_long_messages() -> None:
    body = json.dumps({"status": "error", "message": "x" * 5000}).encode()
    message = classify(400, body, {}).message
    assert len(message) == 1000
    assert message.endswith("…")


# --------------------------------------------------------------------- already exists


@pytest.mark.parametrize(
    "server_message",
    ["Model already exists", "model_id already loaded", "The model id has already been taken."],
)
def test_submit_already_exists_gives_the_adopt_hint(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], server_message: str
) -> None:
    reply = {"status": "error", "message": server_message}
    requests_mock.post(ENDPOINT, json=reply)
    result = make_client().load_model(BODY, model_id="majicmix-realistic")
    assert (result.outcome, result.attempts, result.message) == ("failed", 1, HINT)
    assert result.response == reply
    assert requests_mock.call_count == 1


def test_submit_already_exists_with_force_load_yes(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, status_code=409, json={"message": "Model already exists"})
    result = make_client().load_model({**BODY, "force_load": "yes"}, model_id="majicmix-realistic")
    assert result.outcome == "failed"
    assert result.message == (
        "model id 'majicmix-realistic' already exists on the account and was not reloaded even "
        "with force_load: yes; if it is the right model, adopt it (modelsync state adopt)"
    )


# ------------------------------------------- a lost answer: the create retries as a reload

RELOAD = {**BODY, "force_load": "yes"}
EXISTS = {"status": "error", "message": "Model id already exists"}


def _refused() -> requests.exceptions.ConnectionError:
    # What requests raises when nothing listens: the cause is urllib3's NewConnectionError.
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(None, "/api/v3/load_model", reason)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "lost",
    [
        {"exc": requests.exceptions.ConnectionError("Connection aborted.")},
        {"exc": requests.exceptions.ReadTimeout("read timed out")},
        {"exc": requests.exceptions.ChunkedEncodingError("Connection reset by peer")},
        {"status_code": 503, "text": ""},
        {"status_code": 200, "text": '{"status":"succ'},
    ],
    ids=["reset", "read timeout", "broken answer", "5xx", "truncated 200"],
)
def test_submit_resends_the_reload_body_after_an_answer_that_may_hide_a_load(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    caplog: pytest.LogCaptureFixture,
    lost: dict[str, Any],
) -> None:
    requests_mock.post(ENDPOINT, [lost, {"status_code": 500, "text": ""}, {"json": OK}])
    caplog.set_level(logging.INFO, logger="modelsync.api.transport")
    result = make_client().load_model(BODY, model_id="m", resend_body=RELOAD)
    sent = [r.json() for r in requests_mock.request_history]
    assert [b["force_load"] for b in sent] == ["no", "yes", "yes"]
    assert sent[1] == {**RELOAD, "key": KEY}
    assert (result.outcome, result.attempts, result.resent) == ("submitted", 3, True)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos[0].endswith(
        ", with force_load: yes since the failed attempt may have loaded the model"
    )
    assert "force_load" not in infos[1]


@pytest.mark.parametrize(
    "refused",
    [
        {"status_code": 429, "json": {"status": "error", "message": "Rate limit exceeded"}},
        {"exc": requests.exceptions.ConnectTimeout("timed out")},
        {"exc": _refused()},
    ],
    ids=["429", "connect timeout", "connection refused"],
)
def test_submit_keeps_the_body_after_an_attempt_that_loaded_nothing(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], refused: dict[str, Any]
) -> None:
    requests_mock.post(ENDPOINT, [refused, {"json": OK}])
    result = make_client().load_model(BODY, model_id="m", resend_body=RELOAD)
    assert [r.json()["force_load"] for r in requests_mock.request_history] == ["no", "no"]
    assert (result.outcome, result.attempts, result.resent) == ("submitted", 2, False)


def test_submit_without_resend_body_says_the_lost_attempt_may_have_loaded_it(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    # force_load: no written in the manifest is sent as written, even after a lost answer.
    requests_mock.post(
        ENDPOINT, [{"exc": requests.exceptions.ConnectionError("aborted")}, {"json": EXISTS}]
    )
    result = make_client().load_model(BODY, model_id="majicmix-realistic")
    assert [r.json()["force_load"] for r in requests_mock.request_history] == ["no", "no"]
    assert (result.outcome, result.attempts, result.resent) == ("failed", 2, False)
    assert result.message == (
        "model id 'majicmix-realistic' already exists on the account; an earlier attempt of "
        "this run may have loaded it before its answer was lost, so the next apply retries it"
    )
    assert result.cause == "maybe_reached"


def test_submit_reload_refused_as_existing_gives_the_force_load_yes_hint(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, [{"status_code": 502, "text": ""}, {"json": EXISTS}])
    result = make_client().load_model(BODY, model_id="majicmix-realistic", resend_body=RELOAD)
    assert (result.outcome, result.attempts, result.resent) == ("failed", 2, True)
    assert "was not reloaded even with force_load: yes" in result.message


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [307, 308])
def test_submit_follows_same_host_redirect_and_resends_body(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], status: int
) -> None:
    requests_mock.post(ENDPOINT, status_code=status, headers={"Location": "/api/v4/load_model"})
    moved = requests_mock.post("https://api.test/api/v4/load_model", json=OK)
    result = make_client().load_model(BODY, model_id="m")
    assert (result.outcome, result.attempts, result.http_status) == ("submitted", 1, 200)
    assert moved.call_count == 1
    first, second = requests_mock.request_history
    assert first.json() == second.json() == {**BODY, "key": KEY}
    assert second.method == "POST"


def test_submit_same_host_redirects_stop_after_the_limit(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, status_code=307, headers={"Location": ENDPOINT})
    result = make_client().load_model(BODY, model_id="m")
    assert result.outcome == "redirect"
    assert result.message == (
        f"more than {MAX_REDIRECTS} redirects from {ENDPOINT}: check target.endpoint / --endpoint"
    )
    assert requests_mock.call_count == MAX_REDIRECTS + 1


@pytest.mark.parametrize("status", [302, 307, 308])
def test_submit_never_sends_to_another_host(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], status: int
) -> None:
    requests_mock.post(ENDPOINT, status_code=status, headers={"Location": OTHER_HOST})
    other = requests_mock.post(OTHER_HOST, json=OK)
    other_get = requests_mock.get(OTHER_HOST, json=OK)
    result = make_client().load_model(BODY, model_id="m")
    assert other.call_count == 0
    assert other_get.call_count == 0
    assert requests_mock.call_count == 1
    assert (result.outcome, result.http_status) == ("redirect", status)
    assert OTHER_HOST in result.message
    if status == 302:
        assert "update target.endpoint / --endpoint to" in result.message
    else:
        assert result.message == (
            f"the endpoint redirected (HTTP {status} "
            f"{'Temporary' if status == 307 else 'Permanent'} Redirect) to another host, "
            f"{OTHER_HOST}: not followed, the request and the API key were not sent there; "
            "if the API moved, update target.endpoint / --endpoint"
        )


@pytest.mark.parametrize(
    "location",
    ["http://api.test/api/v3/load_model", "https://api.test:8443/api/v3/load_model"],
    ids=["downgrade to http", "other port"],
)
def test_submit_redirect_to_other_scheme_or_port_is_not_followed(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], location: str
) -> None:
    requests_mock.post(ENDPOINT, status_code=307, headers={"Location": location})
    other = requests_mock.post(location, json=OK)
    result = make_client().load_model(BODY, model_id="m")
    assert result.outcome == "redirect"
    assert other.call_count == 0


def test_submit_does_not_let_requests_follow_redirects(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    # With requests' default allow_redirects=True this 303 would be followed with a GET.
    requests_mock.post(ENDPOINT, status_code=303, headers={"Location": "/elsewhere"})
    target = requests_mock.get("https://api.test/elsewhere", json=OK)
    assert make_client().load_model(BODY, model_id="m").outcome == "redirect"
    assert target.call_count == 0


# ----------------------------------------------------------------- transport errors


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            requests.exceptions.ConnectionError("Connection refused"),
            "connection error (api.test)",
        ),
        (requests.exceptions.ConnectionError(), "connection error (api.test)"),
        (
            requests.exceptions.ConnectTimeout("timed out"),
            "connect timeout: no connection within 10 s (api.test)",
        ),
        (
            requests.exceptions.ReadTimeout("read timed out"),
            "read timeout: no answer within 60 s (api.test)",
        ),
        (
            requests.exceptions.ChunkedEncodingError("Connection reset by peer"),
            "connection broken while reading the answer (api.test)",
        ),
        (
            requests.exceptions.SSLError("EOF occurred in violation of protocol"),
            "connection error (api.test)",
        ),
    ],
    ids=["refused", "bare", "connect timeout", "read timeout", "reset", "ssl"],
)
def test_submit_retries_transport_errors(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    exc: Exception,
    message: str,
) -> None:
    requests_mock.post(ENDPOINT, [{"exc": exc}, {"json": OK}])
    seen: list[Verdict] = []
    result = make_client().load_model(BODY, model_id="m", on_retry=lambda n, v, w: seen.append(v))
    unsent = isinstance(exc, requests.exceptions.ConnectTimeout)
    assert seen == [Verdict("retryable", None, message, None, None, unsent=unsent)]
    assert (result.outcome, result.attempts, result.retryable_failures) == ("submitted", 2, 1)


def test_submit_other_request_errors_are_retryable(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, [{"exc": requests.exceptions.RequestException}, {"json": OK}])
    seen: list[Verdict] = []
    result = make_client().load_model(BODY, model_id="m", on_retry=lambda n, v, w: seen.append(v))
    assert [v.message for v in seen] == ["request error (api.test)"]
    assert result.outcome == "submitted"


def test_submit_bad_endpoint_fails_without_retry(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, exc=requests.exceptions.InvalidURL("bad host"))
    result = make_client().load_model(BODY, model_id="m")
    assert (result.outcome, result.attempts, result.cause) == ("failed", 1, "never_sent")
    assert result.message == (
        "cannot send the request (check target.endpoint / --endpoint) (api.test)"
    )


def test_submit_gives_up_after_max_attempts_with_last_reason(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, status_code=503, text="")
    result = make_client(max_attempts=3).load_model(BODY, model_id="m")
    assert result == CallResult(
        outcome="failed",
        attempts=3,
        http_status=503,
        message="gave up after 3 attempts: HTTP 503 Service Unavailable",
        response=None,
        duration_s=clock.now - 1000.0,
        retryable_failures=3,
        uncertain=True,
        cause="maybe_reached",
    )
    assert requests_mock.call_count == 3
    assert len(clock.sleeps) == 2


def test_submit_single_attempt_gives_up_without_sleeping(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, exc=requests.exceptions.ReadTimeout("slow"))
    result = make_client(max_attempts=1).load_model(BODY, model_id="m")
    assert result.outcome == "failed"
    assert result.message == (
        "gave up after 1 attempt: read timeout: no answer within 60 s (api.test)"
    )
    assert clock.sleeps == []


def test_submit_429_does_not_count_as_retryable_failure(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(
        ENDPOINT,
        [
            {"status_code": 429, "json": {"status": "error", "message": "Rate limit exceeded"}},
            {"status_code": 502, "text": "bad gateway"},
            {"status_code": 429, "text": ""},
            {"exc": requests.exceptions.ConnectTimeout},
            {"json": OK},
        ],
    )
    result = make_client().load_model(BODY, model_id="m")
    assert (result.outcome, result.attempts, result.retryable_failures) == ("submitted", 5, 2)


def test_submit_first_401_sends_exactly_one_request(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, status_code=401, json={"message": "Invalid API key"})
    result = make_client().load_model(BODY, model_id="m")
    assert (result.outcome, result.attempts, result.http_status) == ("auth", 1, 401)
    assert result.retryable_failures == 0
    assert requests_mock.call_count == 1
    assert clock.sleeps == []


# ----------------------------------------------------------------------- Retry-After


def test_retry_after_seconds_header_is_slept_with_up_to_a_fifth_more(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(
        ENDPOINT, [{"status_code": 429, "headers": {"Retry-After": "2"}}, {"json": OK}]
    )
    result = make_client(rng=EdgeRandom()).load_model(BODY, model_id="m")
    assert clock.sleeps == [2.0]
    assert (result.outcome, result.attempts, result.duration_s) == ("submitted", 2, 2.0)
    requests_mock.post(
        ENDPOINT, [{"status_code": 429, "headers": {"Retry-After": "2"}}, {"json": OK}]
    )
    make_client(rng=EdgeRandom(high=True)).load_model(BODY, model_id="m")
    assert clock.sleeps == [2.0, 2.4]


def test_server_named_waits_are_spread_so_refused_workers_do_not_return_together(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    for seed in range(8):
        requests_mock.post(
            ENDPOINT,
            [{"status_code": 429, "json": {"retry_after": 10}}, {"json": OK}],
        )
        make_client(rng=random.Random(seed)).load_model(BODY, model_id="m")
    assert all(10.0 <= w <= 12.0 for w in clock.sleeps)
    assert len(set(clock.sleeps)) == 8  # eight workers, eight different moments


def test_retry_after_http_date_uses_wall_clock(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    date = email.utils.formatdate(WALL + 7, usegmt=True)
    requests_mock.post(
        ENDPOINT, [{"status_code": 503, "headers": {"Retry-After": date}}, {"json": OK}]
    )
    assert make_client(rng=EdgeRandom()).load_model(BODY, model_id="m").outcome == "submitted"
    assert clock.sleeps == [7.0]


def test_retry_after_beyond_max_fails_at_once(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(
        ENDPOINT,
        status_code=429,
        headers={"Retry-After": "86400"},
        json={"status": "error", "message": "Rate limit exceeded"},
    )
    result = make_client().load_model(BODY, model_id="m")
    assert clock.sleeps == []
    assert requests_mock.call_count == 1
    assert (result.outcome, result.attempts, result.http_status) == ("failed", 1, 429)
    assert result.message == (
        "the server asked to wait 86400 s before retrying, more than --max-retry-after 300 s: "
        "not retried in this run (last: HTTP 429: Rate limit exceeded)"
    )


def test_retry_after_cap_is_configurable(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, [{"status_code": 429, "json": {"retry_after": 30}}, {"json": OK}])
    result = make_client(max_retry_after=29.5).load_model(BODY, model_id="m")
    assert result.outcome == "failed"
    assert "wait 30 s before retrying, more than --max-retry-after 29.50 s" in result.message
    assert clock.sleeps == []


@pytest.mark.parametrize("value", ["soon", "-5", "NaN", "inf", "1e3", ""])
def test_malformed_retry_after_falls_back_to_backoff(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    clock: FakeClock,
    value: str,
) -> None:
    requests_mock.post(
        ENDPOINT, [{"status_code": 503, "headers": {"Retry-After": value}}, {"json": OK}]
    )
    assert make_client(rng=random.Random(7)).load_model(BODY, model_id="m").outcome == "submitted"
    assert clock.sleeps == [random.Random(7).uniform(0.0, 1.0)]


def test_body_retry_after_is_honoured(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(
        ENDPOINT,
        [
            {
                "status_code": 429,
                "json": {
                    "status": "error",
                    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                    "retry_after": 30,
                },
            },
            {"json": OK},
        ],
    )
    waits: list[tuple[int, float]] = []
    result = make_client(rng=EdgeRandom()).load_model(
        BODY, model_id="m", on_retry=lambda n, v, w: waits.append((n, w))
    )
    assert clock.sleeps == [30.0]
    assert waits == [(1, 30.0)]
    assert result.outcome == "submitted"


def test_header_retry_after_wins_over_body(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(
        ENDPOINT,
        [
            {"status_code": 429, "headers": {"Retry-After": "2"}, "json": {"retry_after": 30}},
            {"status_code": 429, "headers": {"Retry-After": "soon"}, "json": {"retry_after": 4}},
            {"json": OK},
        ],
    )
    make_client(rng=EdgeRandom()).load_model(BODY, model_id="m")
    assert clock.sleeps == [2.0, 4.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (30, 30.0),
        (2.5, 2.5),
        ("soon", None),
        ("-5", None),
        (-5, None),
        ("NaN", None),
        (float("nan"), None),
        (float("inf"), None),
        ("inf", None),
        ("", None),
        (None, None),
        (True, None),
        ([30], None),
        ("9" * 400, None),
        (email.utils.formatdate(WALL + 120, usegmt=True), 120.0),
        (email.utils.formatdate(WALL - 120, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00", 0.0),
    ],
)
def test_parse_retry_after(value: object, expected: float | None) -> None:
    assert parse_retry_after(value, now_epoch=WALL) == expected


# ---------------------------------------------------------------------------- backoff


@pytest.mark.slow
@pytest.mark.parametrize(("base", "cap"), [(1.0, 60.0), (10.0, 25.0)])
def test_backoff_is_full_jitter_within_bounds(
    requests_mock: rm.Mocker, base: float, cap: float
) -> None:
    requests_mock.post(ENDPOINT, status_code=500, text="")
    for seed in range(200):
        clock = FakeClock()
        client = new_client(
            ENDPOINT,
            KEY,
            max_attempts=8,
            backoff_base=base,
            backoff_cap=cap,
            sleep=clock.sleep,
            clock=clock,
            rng=random.Random(seed),
        )
        result = client.load_model(BODY, model_id="m")
        assert result.attempts == 8
        # The wait after the failed attempt with 0-based index i is uniform(0, min(cap, base*2**i)).
        bounds = [min(cap, base * 2**i) for i in range(7)]
        assert all(0.0 <= s <= b for s, b in zip(clock.sleeps, bounds, strict=True))
        expected_rng = random.Random(seed)
        assert clock.sleeps == [expected_rng.uniform(0.0, b) for b in bounds]


def test_backoff_method_bounds() -> None:
    client = new_client(ENDPOINT, KEY, rng=random.Random(3))
    assert [round(min(60.0, 2.0**i), 6) for i in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    for attempt in range(100):
        assert 0.0 <= client.transport.backoff(attempt) <= min(60.0, 2.0**attempt)


# ---------------------------------------------------------------- stop and deadline


def test_should_stop_before_first_attempt_sends_nothing(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    result = make_client().load_model(BODY, model_id="m", should_stop=lambda: True)
    assert result == CallResult(
        "stopped", 0, None, "stopped before the request was sent", None, 0.0, 0, cause="never_sent"
    )
    assert requests_mock.call_count == 0


def test_should_stop_between_attempts(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, status_code=503, text="")
    checks: list[int] = []

    def stop() -> bool:
        checks.append(1)
        return len(checks) > 2  # the two checks around the first attempt say "go"

    result = make_client().load_model(BODY, model_id="m", should_stop=stop)
    assert (result.outcome, result.attempts, result.http_status) == ("stopped", 1, 503)
    assert result.message == "stopped after 1 attempt; last: HTTP 503 Service Unavailable"
    assert requests_mock.call_count == 1


def test_should_stop_while_waiting_for_the_gate_sends_nothing(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    stopping: list[bool] = []
    gate = RecordingGate(before_acquire=lambda: stopping.append(True))
    result = make_client(gate=gate).load_model(
        BODY, model_id="m", should_stop=lambda: bool(stopping)
    )
    assert result.outcome == "stopped"
    assert requests_mock.call_count == 0
    assert gate.calls == [("acquire",), ("release", "stopped", None)]


def test_deadline_passing_while_waiting_for_the_gate_sends_nothing(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, json=OK)

    def slow_gate() -> None:
        clock.now += 60.0

    gate = RecordingGate(before_acquire=slow_gate)
    result = make_client(gate=gate).load_model(BODY, model_id="m", deadline=clock.now + 30.0)
    # Time queued for a slot is not the request's: duration_s counts from the first attempt.
    assert (result.outcome, result.attempts, result.duration_s) == ("deadline", 0, 0.0)
    assert requests_mock.call_count == 0
    assert gate.calls == [("acquire",), ("release", "deadline", None)]


def test_deadline_passed_sends_nothing(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    result = make_client().load_model(BODY, model_id="m", deadline=clock.now)
    assert (result.outcome, result.attempts) == ("deadline", 0)
    assert result.message == "deadline reached before the request was sent"
    assert requests_mock.call_count == 0


def test_deadline_is_never_slept_past(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    requests_mock.post(ENDPOINT, status_code=429, headers={"Retry-After": "30"}, text="")
    result = make_client(rng=EdgeRandom()).load_model(BODY, model_id="m", deadline=clock.now + 10)
    assert clock.sleeps == []
    assert (result.outcome, result.attempts, result.http_status) == ("deadline", 1, 429)
    assert result.message == (
        "deadline reached: the next attempt would start after it (wait 30 s) after 1 attempt; "
        "last: HTTP 429 Too Many Requests"
    )


@pytest.mark.parametrize(
    ("deadline_in", "attempts", "sleeps", "message"),
    [
        (
            9.0,
            2,
            [1.0],
            "deadline reached: the next attempt would start after it (wait 1 s) after 2 attempts; "
            "last: HTTP 503 Service Unavailable",
        ),
        (5.0, 1, [1.0], "deadline reached after 1 attempt; last: HTTP 503 Service Unavailable"),
    ],
    ids=["wait would cross it", "wait ends on it"],
)
def test_deadline_reached_during_retries(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    clock: FakeClock,
    deadline_in: float,
    attempts: int,
    sleeps: list[float],
    message: str,
) -> None:
    def slow(request: Any, context: Any) -> str:
        clock.now += 4.0  # each request takes 4 s of fake time
        context.status_code = 503
        context.headers["Retry-After"] = "1"
        return ""

    requests_mock.post(ENDPOINT, text=slow)
    start = clock.now
    result = make_client(max_attempts=10, rng=EdgeRandom()).load_model(
        BODY, model_id="m", deadline=start + deadline_in
    )
    assert (result.outcome, result.attempts, result.message) == ("deadline", attempts, message)
    assert clock.sleeps == sleeps
    assert requests_mock.call_count == attempts
    assert result.duration_s == clock.now - start


def test_duration_uses_the_clock(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    answers = iter([(503, ""), (200, json.dumps(OK))])

    def answer(request: Any, context: Any) -> str:
        clock.now += 0.25  # each request takes a quarter of a fake second
        context.status_code, text = next(answers)
        context.headers["Retry-After"] = "2"
        return text

    requests_mock.post(ENDPOINT, text=answer)
    result = make_client(rng=EdgeRandom()).load_model(BODY, model_id="m")
    assert result.duration_s == 2.5


# ------------------------------------------------------------------ request and gate


def test_request_carries_key_timeouts_and_user_agent(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, json=OK)
    make_client(connect_timeout=3.0, read_timeout=20.0).load_model(BODY, model_id="m")
    (sent,) = requests_mock.request_history
    assert sent.json() == {**BODY, "key": KEY}
    timeout: object = sent.timeout  # typed int in the stubs; requests passes the tuple
    assert timeout == (3.0, 20.0)
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["User-Agent"].startswith("modelsync/")
    assert "key" not in BODY  # the caller's mapping is not modified


def test_gate_is_held_around_every_attempt(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(
        ENDPOINT,
        [
            {"status_code": 429, "text": ""},
            {"exc": requests.exceptions.ConnectionError},
            {"json": OK},
        ],
    )
    gate = RecordingGate()
    make_client(gate=gate).load_model(BODY, model_id="m")
    assert gate.calls == [
        ("acquire",),
        ("release", "retryable", 429, True),  # pacing
        ("acquire",),
        ("release", "retryable", None),
        ("acquire",),
        ("release", "submitted", 200),
    ]


def test_gate_is_released_when_the_attempt_raises(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, exc=RuntimeError("bug"))
    gate = RecordingGate()
    with pytest.raises(RuntimeError):
        make_client(gate=gate).load_model(BODY, model_id="m")
    assert gate.calls == [("acquire",), ("release", "failed", None)]


def test_retry_is_logged_once_per_retry(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    requests_mock.post(
        ENDPOINT,
        [
            {"status_code": 503, "headers": {"Retry-After": "3"}, "text": ""},
            {"status_code": 429, "json": {"message": "Rate limit exceeded", "retry_after": 1.5}},
            {"json": OK},
        ],
    )
    caplog.set_level(logging.INFO, logger="modelsync.api.transport")
    make_client(rng=EdgeRandom()).load_model(BODY, model_id="majicmix-realistic")
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in infos] == [
        "majicmix-realistic: attempt 1 of 5 failed (HTTP 503 Service Unavailable); retrying in 3 s",
        "majicmix-realistic: rate limited (HTTP 429: Rate limit exceeded); retrying in 1.50 s",
    ]
    assert [getattr(r, "model_id", None) for r in infos] == ["majicmix-realistic"] * 2


def test_custom_logger_is_used(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    requests_mock.post(ENDPOINT, [{"status_code": 500, "text": ""}, {"json": OK}])
    caplog.set_level(logging.INFO)
    make_client(logger=logging.getLogger("custom.apply")).load_model(BODY, model_id="m")
    assert [r.name for r in caplog.records] == ["custom.apply"]


# ------------------------------------------------------------------------ session


def test_own_session_pools_without_urllib3_retries() -> None:
    client = new_client(ENDPOINT, KEY)
    for prefix in ("https://", "http://"):
        adapter = client.transport._session.adapters[prefix]
        assert isinstance(adapter, HTTPAdapter)
        assert adapter._pool_maxsize == 32  # type: ignore[attr-defined]
        assert adapter.max_retries.total == 0
    client.close()


def test_close_leaves_a_borrowed_session_open(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    session = requests.Session()
    monkeypatch.setattr(session, "close", lambda: closed.append("borrowed"))
    new_client(ENDPOINT, KEY, session=session).close()
    assert closed == []
    with new_client(ENDPOINT, KEY) as own:
        monkeypatch.setattr(own.transport._session, "close", lambda: closed.append("own"))
    assert closed == ["own"]


def test_one_session_is_reused(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    session = requests.Session()
    requests_mock.post(ENDPOINT, json=OK)
    client = make_client(session=session)
    client.load_model(BODY, model_id="a")
    client.load_model(BODY, model_id="b")
    assert client.transport._session is session
    assert requests_mock.call_count == 2


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        new_client(ENDPOINT, KEY, max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        new_client(ENDPOINT, KEY, backoff_cap=-1)


def test_oversized_body_is_read_only_up_to_the_limit(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    huge = b'{"status": "success", "message": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    requests_mock.post(ENDPOINT, [{"content": huge}, {"json": OK}])
    seen: list[Verdict] = []
    make_client().load_model(BODY, model_id="m", on_retry=lambda n, v, w: seen.append(v))
    assert [v.message for v in seen] == [
        "unreadable answer (HTTP 200 OK): invalid JSON (the body was cut short?)"
    ]


# ------------------------------------------------------------------------- secrets

CANARY = "CANARY-KEY-9f8e7d"


def _echo(status: int, shape: str) -> Callable[[Any, Any], str]:
    """A server that puts the whole request body into its error answer."""

    def reply(request: Any, context: Any) -> str:
        context.status_code = status
        raw = request.text if isinstance(request.text, str) else request.body.decode()
        if shape == "message":
            return json.dumps({"status": "error", "message": f"bad request: {raw}"})
        if shape == "object":
            return json.dumps(
                {
                    "status": "error",
                    "message": {"key": [f"{raw} is invalid"], "url": ["required"]},
                    "request": json.loads(raw),
                    request.json()["key"]: "echoed as a field name",
                    "tips": raw,
                }
            )
        if shape == "html":
            context.headers["Content-Type"] = "text/html"
            return f"<html><body><pre>{raw}</pre></body></html>"
        raise AssertionError(shape)

    return reply


@pytest.mark.parametrize(
    ("status", "shape"),
    [
        (400, "message"),
        (400, "object"),
        (200, "message"),
        (200, "object"),
        (401, "message"),
        (402, "object"),
        (500, "message"),
        (429, "object"),
        (200, "html"),
        (502, "html"),
        (404, "html"),
    ],
)
@pytest.mark.parametrize("registry_cleared", [False, True], ids=["registered", "literal"])
def test_canary_key_never_leaks(
    requests_mock: rm.Mocker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    status: int,
    shape: str,
    registry_cleared: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    requests_mock.post(ENDPOINT, text=_echo(status, shape))
    client = new_client(
        ENDPOINT, CANARY, sleep=clock.sleep, clock=clock, rng=random.Random(0), max_attempts=3
    )
    if registry_cleared:
        redact.clear_secrets()  # the client still masks its own key
    seen: list[Verdict] = []
    result = client.load_model(BODY, model_id="m", on_retry=lambda n, v, w: seen.append(v))
    assert requests_mock.last_request is not None
    assert CANARY in requests_mock.last_request.text  # the key was sent...
    # ...and nothing the caller can see carries it back.
    assert CANARY not in repr(result)
    assert CANARY not in repr(seen)
    assert CANARY not in caplog.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in repr(record.__dict__)
    if shape != "html" and status < 500 and status != 429:
        assert result.response is not None
        assert "***" in json.dumps(result.response)


@pytest.mark.parametrize(
    "exc_type",
    [
        requests.exceptions.ConnectionError,
        requests.exceptions.ReadTimeout,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.InvalidURL,
    ],
)
def test_canary_key_not_in_exception_texts(
    requests_mock: rm.Mocker,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    exc_type: type[requests.RequestException],
) -> None:
    caplog.set_level(logging.DEBUG)
    requests_mock.post(
        ENDPOINT,
        exc=exc_type(f"POST https://api.test/?key={CANARY} failed: body {{'key': '{CANARY}'}}"),
    )
    client = new_client(ENDPOINT, CANARY, sleep=clock.sleep, clock=clock, max_attempts=2)
    result = client.load_model(BODY, model_id="m")  # returns, never raises
    assert "***" in caplog.text  # the detail is logged at debug level, masked
    assert len(result.message) < 200  # one short line: kind and host
    assert CANARY not in repr(result)
    assert CANARY not in caplog.text


@pytest.mark.parametrize("status", [301, 307])
def test_canary_key_not_in_redirect_messages(
    requests_mock: rm.Mocker, clock: FakeClock, status: int
) -> None:
    location = f"https://evil.test/steal?key={CANARY}"
    requests_mock.post(ENDPOINT, status_code=status, headers={"Location": location})
    evil = requests_mock.post("https://evil.test/steal", json=OK)
    client = new_client(ENDPOINT, CANARY, sleep=clock.sleep, clock=clock)
    result = client.load_model(BODY, model_id="m")
    assert evil.call_count == 0
    assert result.outcome == "redirect"
    assert CANARY not in repr(result)
    assert "https://evil.test/steal?key=***" in result.message


# ------------------------------------------------------------ pacing and causes (DESIGN §4)


def test_429s_use_no_attempt(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    limited = {"status_code": 429, "json": {"status": "error", "retry_after": 1}}
    requests_mock.post(ENDPOINT, [limited, limited, limited, {"json": OK}])
    result = make_client(max_attempts=1).load_model(BODY, model_id="m")
    assert (result.outcome, result.attempts, result.retryable_failures) == ("submitted", 4, 0)
    assert len(clock.sleeps) == 3


def test_429s_are_bounded_without_a_deadline(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    from modelsync.defaults import MAX_RATE_LIMITED

    requests_mock.post(ENDPOINT, status_code=429, json={"status": "error", "retry_after": 1})
    result = make_client(max_attempts=1).load_model(BODY, model_id="m")
    assert (result.outcome, result.cause) == ("failed", "rejected")
    assert requests_mock.call_count == MAX_RATE_LIMITED


def test_spam_filter_wait_is_read_from_its_words(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    spam = {
        "status": "error",
        "message": "Rate limit exceeded",
        "tips": "you are sending same request multiple times, spam filter is enabled, "
        "please wait for 30 seconds and try again",
    }
    requests_mock.post(ENDPOINT, [{"json": spam}, {"json": OK}])
    result = make_client(rng=EdgeRandom()).load_model(BODY, model_id="m")
    assert clock.sleeps == [30.0]
    assert result.outcome == "submitted"


@pytest.mark.parametrize(
    ("answers", "cause"),
    [
        ([{"exc": requests.exceptions.ConnectTimeout}] * 2, "never_sent"),
        ([{"exc": requests.exceptions.ReadTimeout}] * 2, "maybe_reached"),
        ([{"status_code": 503, "text": ""}] * 2, "maybe_reached"),
        ([{"status_code": 404, "json": {"status": "error", "message": "nope"}}], "rejected"),
        ([{"json": {"status": "error", "message": {"url": ["bad url"]}}}], "rejected"),
        (
            [{"status_code": 400, "json": {"status": "error", "message": "bad", "code": 400}}],
            "rejected",
        ),
        ([{"json": {"status": "error", "message": "Model id already exists"}}], "conflict"),
    ],
    ids=["connect", "read timeout", "503", "404", "error body", "published 400", "exists"],
)
def test_each_failure_records_its_cause(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    answers: list[dict[str, Any]],
    cause: str,
) -> None:
    requests_mock.post(ENDPOINT, answers)
    result = make_client(max_attempts=2).load_model(BODY, model_id="m")
    assert (result.outcome, result.cause) == ("failed", cause)


def test_exists_after_a_reload_is_a_rejection_not_a_conflict(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, json={"status": "error", "message": "Model id already exists"})
    result = make_client().load_model({**BODY, "force_load": "yes"}, model_id="m")
    assert (result.outcome, result.cause) == ("failed", "rejected")


@pytest.mark.parametrize(
    "answer",
    [
        {
            "status": "error",
            "message": "Rate limit exceeded",
            "tips": "you are sending same request multiple times, spam filter is enabled, "
            "please wait for 3 seconds and try again",
        },
        {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""},
        {"status": "error", "message": "Rate limit exceeded. Maximum 5 queued requests allowed."},
    ],
    ids=["spam filter", "failed try again", "rate limit in words"],
)
def test_a_refusal_in_words_is_never_taken_for_a_load(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], answer: dict[str, Any]
) -> None:
    # The server said it did not act: the create is retried as a create, never resent with
    # force_load yes (which would replace a model someone loaded by hand).
    requests_mock.post(ENDPOINT, [{"json": answer}, {"json": EXISTS}])
    result = make_client().load_model(BODY, model_id="m", resend_body=RELOAD)
    assert [r.json()["force_load"] for r in requests_mock.request_history] == ["no", "no"]
    assert (result.outcome, result.cause, result.resent) == ("failed", "conflict", False)


def test_pacing_in_words_uses_no_attempt_and_slows_the_gate(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    limited = {"json": {"status": "error", "message": "Rate limit exceeded", "retry_after": 1}}
    requests_mock.post(ENDPOINT, [limited, {"json": OK}])
    gate = RecordingGate()
    result = make_client(gate=gate, max_attempts=1).load_model(BODY, model_id="m")
    assert result.outcome == "submitted"
    assert gate.calls[1] == ("release", "retryable", 200, True)


def test_429s_are_not_capped_within_a_deadline(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], clock: FakeClock
) -> None:
    from modelsync.defaults import MAX_RATE_LIMITED

    limited = {"status_code": 429, "json": {"status": "error", "retry_after": 1}}
    requests_mock.post(ENDPOINT, [limited] * (MAX_RATE_LIMITED + 5) + [{"json": OK}])
    result = make_client(rng=EdgeRandom()).load_model(BODY, model_id="m", deadline=clock.now + 3600)
    assert (result.outcome, result.attempts) == ("submitted", MAX_RATE_LIMITED + 6)


def test_numbers_json_cannot_carry_are_kept_as_text() -> None:
    body = b'{"status": "success", "message": "ok", "eta": 1e999, "x": NaN, "y": -Infinity}'
    verdict = classify(200, body, {})
    assert verdict.kind == "submitted"
    assert verdict.response == {
        "status": "success",
        "message": "ok",
        "eta": "1e999",
        "x": "NaN",
        "y": "-Infinity",
    }
    json.dumps(verdict.response, allow_nan=False)  # storable in the state


# --------------------------------------------- found by review: never an overwrite, nor a crash


@pytest.mark.parametrize("status", [500, 503, 409, 200])
def test_already_exists_in_any_status_is_a_conflict_never_a_reload(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient], status: int
) -> None:
    requests_mock.post(ENDPOINT, status_code=status, json=EXISTS)
    result = make_client().load_model(BODY, model_id="m", resend_body=RELOAD)
    assert [r.json()["force_load"] for r in requests_mock.request_history] == ["no"]
    assert (result.outcome, result.cause) == ("failed", "conflict")


def test_a_settled_answer_after_an_attempt_that_may_have_loaded_keeps_maybe_reached(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    # The 502 may hide a load by this run: the next run must retry with yes, not take the
    # model for someone else's.
    requests_mock.post(
        ENDPOINT,
        [{"status_code": 502, "text": ""}, {"status_code": 402, "json": {"message": "x"}}],
    )
    result = make_client().load_model(BODY, model_id="m", resend_body=RELOAD)
    assert (result.outcome, result.cause) == ("account", "maybe_reached")


def test_an_answer_read_whole_stands_even_if_an_abort_came_meanwhile(
    requests_mock: rm.Mocker, make_client: Callable[..., LoadModelClient]
) -> None:
    requests_mock.post(ENDPOINT, json=EXISTS)
    client = make_client()
    client.transport.inflight.done = lambda: "the --deadline passed"  # type: ignore[method-assign]
    result = client.load_model(BODY, model_id="m", resend_body=RELOAD)
    assert (result.outcome, result.cause) == ("failed", "conflict")
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ({"json": {"status": "success", "message": "ok", "retry_after": 10**400}}, "submitted"),
        ({"text": '{"status": "error", "message": ' + "[" * 400 + "]" * 400 + "}"}, "failed"),
        ({"status_code": 307, "headers": {"Location": "http://[oops/x"}}, "redirect"),
        ({"status_code": 301, "headers": {"Location": "http://[oops/x"}}, "redirect"),
    ],
    ids=["huge retry_after", "deeply nested message", "bad location 307", "bad location 301"],
)
def test_a_hostile_answer_never_raises(
    requests_mock: rm.Mocker,
    make_client: Callable[..., LoadModelClient],
    answer: dict[str, Any],
    kind: str,
) -> None:
    requests_mock.post(ENDPOINT, [answer, {"json": OK}])
    result = make_client(max_attempts=1).load_model(BODY, model_id="m")
    assert result.outcome == kind, result
