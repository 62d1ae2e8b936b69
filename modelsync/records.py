"""The data every layer shares: a model as declared, a model as recorded, the state.

The manifest loader builds :class:`ModelSpec` values, the store reads and writes
:class:`ModelRecord` values, the planner compares the two; raw dicts stay inside the
manifest loader and the state backends.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from modelsync.errors import StateError

Status = Literal["submitted", "failed", "pending"]
STATUSES: tuple[str, ...] = get_args(Status)
# Why a submission failed (DESIGN §4): it decides what a later retry sends.
Cause = Literal["never_sent", "maybe_reached", "rejected", "conflict"]
CAUSES: tuple[str, ...] = get_args(Cause)
RECORD_FIELDS = (
    "fingerprint",
    "request",
    "status",
    "attempts",
    "submitted_at",
    "last_attempt_at",
    "response",
    "last_error",
    "cause",
)


def utc_now() -> str:
    """Return the current time in the state's timestamp format, e.g. ``2026-11-25T10:00:00Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- declared

# Fields sent to the API, in the order they are sent and shown.
SENT_FIELDS = (
    "model_id",
    "url",
    "model_format",
    "model_category",
    "model_subcategory",
    "model_name",
    "model_image",
    "revision",
    "model_visibility",
    "hf_upload",
    "force_load",
)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the manifest, defaults merged, as modelsync will send it."""

    model_id: str
    url: str  # as written: ${VAR} not yet replaced (what state and output show)
    model_format: str
    model_category: str
    model_name: str
    revision: str
    model_visibility: str
    hf_upload: str
    force_load: str | None  # None: not written, modelsync's policy decides
    model_subcategory: str | None = None
    model_image: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    index: int = 0
    line: int = 0
    # The interpolated values: only ever put into the request that is sent.
    resolved: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    def request(self, force_load: str) -> dict[str, str]:
        """The body without the key, before interpolation: what state records and plan shows."""
        body: dict[str, str] = {}
        for name in SENT_FIELDS:
            value = force_load if name == "force_load" else getattr(self, name)
            if value is not None:
                body[name] = value
        return body

    def body(self, force_load: str) -> dict[str, str]:
        """The body to send (without the key): the request with secrets interpolated."""
        body = self.request(force_load)
        body.update(self.resolved)
        return body

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the request without force_load (computed once)."""
        parts = []
        for name, key in _CANONICAL_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if type(value) is not str:  # pragma: no cover - the loader builds text only
                return fingerprint(self.request("no"))
            parts.append(key + _json_text(value))
        return _sha256("{" + ",".join(parts) + "}")


# The canonical JSON of a request of text values, written directly: the sent fields but
# force_load, sorted, each key already encoded (what json.dumps with sort_keys writes;
# tests/test_plan.py pins the fingerprints states hold).
_CANONICAL_FIELDS = tuple(
    (name, json.dumps(name) + ":") for name in sorted(SENT_FIELDS) if name != "force_load"
)
_json_text: Callable[[str], str] = json.encoder.encode_basestring
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(request: Mapping[str, Any]) -> str:
    """The fingerprint of a recorded or planned request (force_load is ignored)."""
    canonical = {k: v for k, v in request.items() if k != "force_load"}
    return _sha256(_CANONICAL.encode(canonical))


# --------------------------------------------------------------------------- recorded


@dataclass(frozen=True)
class ModelRecord:
    """What modelsync last did for one model_id."""

    fingerprint: str
    request: Mapping[str, Any]
    status: Status
    attempts: int = 0
    submitted_at: str | None = None
    last_attempt_at: str | None = None
    response: Mapping[str, Any] | None = None
    last_error: str | None = None
    cause: Cause | None = None  # set on failed records; absent in states before causes

    def to_json(self, *, copy: bool = True) -> dict[str, Any]:
        """Return the record as the plain JSON object stored in the state: a deep copy, or
        with ``copy=False`` one that shares the request and response (to encode at once)."""
        request, response = self.request, self.response
        data = {
            "fingerprint": self.fingerprint,
            "request": _plain(request) if copy else request,
            "status": self.status,
            "attempts": self.attempts,
            "submitted_at": self.submitted_at,
            "last_attempt_at": self.last_attempt_at,
            "response": _plain(response) if copy and response is not None else response,
            "last_error": self.last_error,
        }
        if self.cause is not None:
            data["cause"] = self.cause
        return data

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> ModelRecord:
        """Build a record from its JSON object; StateError naming ``where`` on a bad shape."""
        if data.__class__ is dict:
            try:
                return cls.adopt_json(dict(data))
            except ValueError:
                pass  # worded below
        return cls._from_other_json(data, where)

    @classmethod
    def adopt_json(cls, data: dict[str, Any]) -> ModelRecord:
        """A record made of ``data`` itself, a JSON object as to_json writes it, which the
        caller hands over (it must not change it); ValueError for any other object, which
        from_json reads or words the error for.

        The check costs a few type tests, and ``data`` becomes the record's fields as it is,
        the way pickle and copy restore an instance: a frozen dataclass's __init__ sets each
        field with object.__setattr__, which was half the cost of reading a large state.
        """
        try:
            (
                fingerprint,
                request,
                status,
                attempts,
                submitted_at,
                last_attempt_at,
                response,
                last_error,
            ) = _WRITTEN_FIELDS(data)
            cause = data.get("cause")  # without it, the dataclass's default (None) is read
            written = (
                (len(data) == 8 or (len(data) == 9 and "cause" in data))
                and fingerprint.__class__ is str
                and fingerprint
                and request.__class__ is dict
                and status in _STATUS_SET
                and attempts.__class__ is int
                and attempts >= 0
                and response.__class__ in _OBJECT_OR_NULL
                and submitted_at.__class__ in _TEXT_OR_NULL
                and last_attempt_at.__class__ in _TEXT_OR_NULL
                and last_error.__class__ in _TEXT_OR_NULL
                and (cause is None or cause in _CAUSE_SET)
            )
        except (KeyError, TypeError):  # not an object, a field missing, a value unhashable
            written = False
        if not written:
            raise ValueError("not a record as modelsync writes it")
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", data)
        return record

    @classmethod
    def _from_other_json(cls, data: Any, where: str) -> ModelRecord:
        """from_json for any other object: each field checked in turn, the first problem raised."""
        if not isinstance(data, dict):
            raise StateError(f"{where}: expected an object, found {describe_kind(data)}")
        unknown = sorted(str(key) for key in data if key not in RECORD_FIELDS)
        if unknown:
            raise StateError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        for name in ("fingerprint", "request", "status"):
            if name not in data:
                raise StateError(f"{where}: missing field {name!r}")
        fingerprint = data["fingerprint"]
        if not isinstance(fingerprint, str) or not fingerprint:
            raise StateError(f"{where}.fingerprint: expected a non-empty string")
        request = data["request"]
        if not isinstance(request, dict):
            raise StateError(f"{where}.request: expected an object, found {describe_kind(request)}")
        status = data["status"]
        if status not in STATUSES:
            raise StateError(f"{where}.status: {status!r} is not one of {', '.join(STATUSES)}")
        attempts = data.get("attempts", 0)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise StateError(f"{where}.attempts: expected a whole number >= 0, found {attempts!r}")
        texts = _optional_texts(data, where)
        response = data.get("response")
        if response is not None and not isinstance(response, dict):
            raise StateError(
                f"{where}.response: expected an object or null, found {describe_kind(response)}"
            )
        return cls(
            fingerprint=fingerprint,
            request=request,
            status=cast(Status, status),
            cause=cast("Cause | None", texts["cause"]),
            attempts=attempts,
            submitted_at=texts["submitted_at"],
            last_attempt_at=texts["last_attempt_at"],
            response=response,
            last_error=texts["last_error"],
        )


# Every field but ``cause``, which to_json writes only when it is set.
_WRITTEN_FIELDS = itemgetter(*(name for name in RECORD_FIELDS if name != "cause"))
_STATUS_SET = frozenset(STATUSES)
_CAUSE_SET = frozenset(CAUSES)
_TEXT_OR_NULL = frozenset({str, type(None)})
_OBJECT_OR_NULL = frozenset({dict, type(None)})


def _optional_texts(data: Mapping[str, Any], where: str) -> dict[str, str | None]:
    texts: dict[str, str | None] = {}
    for name in ("submitted_at", "last_attempt_at", "last_error", "cause"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise StateError(
                f"{where}.{name}: expected a string or null, found {describe_kind(value)}"
            )
        texts[name] = value
    cause = texts["cause"]
    if cause is not None and cause not in CAUSES:
        raise StateError(f"{where}.cause: {cause!r} is not one of {', '.join(CAUSES)}")
    return texts


def new_record(
    spec: ModelSpec,
    request: Mapping[str, Any],
    status: Status,
    *,
    attempts: int = 0,
    submitted_at: str | None = None,
    last_attempt_at: str | None = None,
    response: Mapping[str, Any] | None = None,
    last_error: str | None = None,
    cause: Cause | None = None,
) -> ModelRecord:
    """The one builder of state records: what modelsync did for ``spec``."""
    return ModelRecord(
        fingerprint=spec.fingerprint,
        request=dict(request),
        status=status,
        attempts=attempts,
        submitted_at=submitted_at,
        last_attempt_at=last_attempt_at,
        response=dict(response) if response is not None else None,
        last_error=last_error,
        cause=cause,
    )


@dataclass(frozen=True)
class State:
    """A view of the state: the snapshot with any journaled results folded in."""

    location: str  # a path, or a URL with its password masked: for messages
    lineage: str
    serial: int
    endpoint: str
    models: Mapping[str, ModelRecord]
    exists: bool


# The values a JSON document holds that are not containers.
_ATOMS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    if value.__class__ in _ATOMS:
        return value
    if isinstance(value, Mapping):
        if _ATOMS.issuperset(map(type, value.values())):
            return dict(value)  # the usual request or answer: no container inside
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def describe_kind(value: Any) -> str:
    """A JSON value's kind in words, for messages: ``a string``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
