"""The ModelsLab API: its operations, over the one transport, and load_model's own policy.

The base URL is kept apart from the operation paths, so that more calls than
load_model (model_list, model_reload...) are one method each. The load_model policy
lives here: the key in the body, the resend with force_load yes after an attempt that
may have loaded the model, and the hint when a model id already exists.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from modelsync.api.envelope import EXISTS_PHRASES, Verdict, classify, normalize, says
from modelsync.api.retry import CallResult
from modelsync.api.transport import Transport
from modelsync.records import Cause

LOAD_MODEL_PATH = "/api/v3/load_model"


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``https://host/api/v3/load_model`` -> (``https://host``, the load_model URL).

    An endpoint that does not end in the documented path (a proxy, a gateway) is used
    as the load_model URL as it is, and its origin as the base for other operations.
    """
    trimmed = endpoint.rstrip("/")
    if trimmed.endswith(LOAD_MODEL_PATH):
        return trimmed[: -len(LOAD_MODEL_PATH)], endpoint
    parts = urllib.parse.urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}", endpoint


class ModelsLab:
    """The API family of DESIGN §4 and API_NOTES.md, with the account's key."""

    def __init__(self, endpoint: str, api_key: str, transport: Transport) -> None:
        self.base_url, self.load_model_url = split_endpoint(endpoint)
        self._key = api_key
        self.transport = transport

    def __enter__(self) -> ModelsLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the transport's session."""
        self.transport.close()

    def url(self, path: str) -> str:
        """The URL of an operation path (``/api/v4/dreambooth/model_list``)."""
        return self.base_url + path

    def _classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Verdict:
        t = self.transport
        return classify(status, body, headers, now=t.wall_clock(), masker=t.masker)

    def load_model(
        self,
        body: Mapping[str, str],
        *,
        model_id: str,
        should_stop: Callable[[], bool] = lambda: False,
        deadline: float | None = None,
        on_retry: Callable[[int, Verdict, float], None] | None = None,
        resend_body: Mapping[str, str] | None = None,
    ) -> CallResult:
        """POST one model (``body`` without the key), retrying what can be retried.

        ``resend_body`` replaces ``body`` for the attempts after one that may have loaded
        the model unannounced (``Verdict.may_have_loaded``): a create retries as a reload.
        """
        payload = {**body, "key": self._key}
        resend = {**resend_body, "key": self._key} if resend_body is not None else None
        result = self.transport.call(
            self.load_model_url,
            payload,
            classify=self._classify,
            label=model_id,
            should_stop=should_stop,
            deadline=deadline,
            on_retry=on_retry,
            resend_payload=resend,
        )
        if result.answered == "failed" and says(normalize(result.message), EXISTS_PHRASES):
            sent = resend if result.resent and resend is not None else payload
            force_load = sent.get("force_load")
            hint = exists_hint(model_id, force_load, result.uncertain)
            # Sent with force_load no and refused as existing: a model of this id is on the
            # account and this run did not put it there. Never retried on our own initiative.
            cause: Cause = "rejected"
            if force_load == "no":
                cause = "maybe_reached" if result.uncertain else "conflict"
            result = dataclasses.replace(result, message=hint, cause=cause)
        return result


def exists_hint(model_id: str, force_load: Any, uncertain: bool = False) -> str:
    """What a "model id already exists" answer means for this request."""
    if force_load == "yes":
        return (
            f"model id '{model_id}' already exists on the account and was not reloaded "
            "even with force_load: yes; if it is the right model, adopt it (modelsync state "
            "adopt)"
        )
    if uncertain:
        return (
            f"model id '{model_id}' already exists on the account; an earlier attempt of this "
            "run may have loaded it before its answer was lost, so the next apply retries it"
        )
    return (
        f"model id '{model_id}' already exists on the account and modelsync did not put it "
        "there: not replaced"
    )
