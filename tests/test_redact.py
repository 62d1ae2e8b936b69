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


def test_network_guard_refuses_public_address() -> None:
    import socket

    s = socket.socket()
    try:
        with pytest.raises(NetworkBlocked):
            s.connect(("192.0.2.1", 443))
    finally:
        s.close()
