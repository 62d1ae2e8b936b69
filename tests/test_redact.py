from __future__ import annotations

import logging

import pytest

from modelsync import redact
from tests.conftest import NetworkBlocked


def test_redact_masks_registered_secret_and_escaped_forms() -> None:
    redact.register_secret("CANARY/a b")
    text = 'raw CANARY/a b, url CANARY%2Fa%20b, plus CANARY%2Fa+b, json "CANARY/a b"'
    out = redact.redact(text)
    assert "CANARY" not in out
    assert out.count("***") == 4


def test_redact_without_secrets_is_identity() -> None:
    assert redact.redact("nothing to hide") == "nothing to hide"


def test_redacting_filter_masks_log_arguments(caplog: pytest.LogCaptureFixture) -> None:
    redact.register_secret("s3cr3t-canary")
    logger = logging.getLogger("modelsync.test")
    logger.addFilter(redact.RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="modelsync.test"):
            logger.info("sending %s", "key=s3cr3t-canary")
    finally:
        logger.filters.clear()
    assert "s3cr3t-canary" not in caplog.text
    assert "key=***" in caplog.text


def test_redactor_options_are_off_by_default() -> None:
    r = redact.Redactor()
    r.add("abc")
    assert not r
    assert r.text("abc") == "abc"
    assert r.text("https://x.test/f?token=t0k3n") == "https://x.test/f?token=t0k3n"
    assert r.json({"key": "k", "a": ["abc"]}) == {"key": "k", "a": ["abc"]}
    assert r.raw_json('{"key": "k"') == '{"key": "k"'


def test_redactor_whole_masks_a_short_secret_only_when_it_is_the_value() -> None:
    r = redact.Redactor()
    r.add("abc", whole=True)
    assert r
    assert r.text("abc") == "***"
    assert r.text("abcd and abc") == "abcd and abc"
    assert r.json({"k": "abc", "l": ["abc", "xabcx"], "abc": 1}) == {
        "k": "***",
        "l": ["***", "xabcx"],
        "***": 1,
    }


def test_redactor_whole_with_a_long_secret_also_masks_it_inside_text() -> None:
    r = redact.Redactor()
    r.add("long-canary-1", whole=True)
    assert r.text("long-canary-1") == "***"
    assert r.text("has long-canary-1 inside") == "has *** inside"
    r.clear()
    assert not r
    assert r.text("long-canary-1") == "long-canary-1"


def test_redactor_url_credentials_masks_token_like_query_values() -> None:
    r = redact.Redactor(url_credentials=True)
    assert r
    url = "https://civitai.com/api/download/models/1?type=Model&token=t0k3n-canary&fp=fp16"
    assert r.text(url) == "https://civitai.com/api/download/models/1?type=Model&token=***&fp=fp16"
    assert r.text("/f?access_token=a1&SIG=s2#frag") == "/f?access_token=***&SIG=***#frag"
    assert r.text("/f;apikey=a1") == "/f;apikey=***"
    # Only query parameters: a bare word and an unknown name are left alone.
    assert r.text("token=x") == "token=x"
    assert r.text("/f?tokens=x") == "/f?tokens=x"
    assert r.json({"url": "https://h.test/m?key=k3y"}) == {"url": "https://h.test/m?key=***"}


def test_redactor_masked_fields_masks_the_whole_value_at_any_depth() -> None:
    r = redact.Redactor(masked_fields=("key",))
    body = {
        "key": "k",
        "model_id": "m",
        "extra": [{"key": {"nested": "x"}}, {"key": 5}, {"keys": "kept"}],
    }
    assert r.json(body) == {
        "key": "***",
        "model_id": "m",
        "extra": [{"key": "***"}, {"key": "***"}, {"keys": "kept"}],
    }
    assert body["key"] == "k"  # a copy


def test_redactor_raw_json_masks_fields_in_a_document_that_does_not_parse() -> None:
    r = redact.Redactor(masked_fields=("key", "token"))
    r.add("canary-key-1")
    assert r.raw_json('{"key" : "a\\"b", "url": "u", "token":"t') == (
        '{"key" : "***", "url": "u", "token":"t'
    )
    # An unterminated value is left to the secret search.
    assert r.raw_json('{"key": "canary-key-1') == '{"key": "***'
    assert r.raw_json('{"model_id": "key"}') == '{"model_id": "key"}'


def test_redactor_include_registered_adds_the_process_secrets() -> None:
    own = redact.Redactor(include_registered=True)
    plain = redact.Redactor()
    assert not own
    redact.register_secret("process-canary")
    assert own
    assert own.text("a process-canary b") == "a *** b"
    assert plain.text("a process-canary b") == "a process-canary b"
    # The process's own redaction does not learn the instance's secrets.
    own.add("own-canary")
    assert redact.redact("own-canary") == "own-canary"


def test_redactor_json_cuts_a_deeply_nested_value_instead_of_crashing() -> None:
    r = redact.Redactor(masked_fields=("key",))
    r.add("abc", whole=True)
    deep: object = "abc"
    for _ in range(10_000):
        deep = [deep]
    out = r.json({"key": "abc", "deep": deep}, max_depth=3)
    assert out == {"key": "***", "deep": [["…"]]}


def test_network_guard_refuses_public_address() -> None:
    import socket

    s = socket.socket()
    try:
        with pytest.raises(NetworkBlocked):
            s.connect(("192.0.2.1", 443))
    finally:
        s.close()
