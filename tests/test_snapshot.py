"""The snapshot's layout and its two readers (modelsync.store.snapshot, docs/state.md).

A snapshot is one JSON document written a line per model. It is read by the C parser when
the text's own count of commas and brackets proves the strict parser (a Python hook per
object) would read the same; anything else goes to the strict parser, which words the
problem. Each hand edit below is read, or refused, exactly as the strict parser alone does.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsync.errors import StateError
from modelsync.records import RECORD_FIELDS, ModelRecord
from modelsync.store import fileio, snapshot
from modelsync.store.file import StateStore, read_state
from modelsync.store.fileio import Shape, json_depth, json_shape
from modelsync.store.snapshot import dump_snapshot

ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
TOKEN_URL = (
    "https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor"
    "&token=${CIVITAI_TOKEN}"
)


def rec(n: int = 1, status: str = "submitted", **extra: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "fingerprint": f"sha256:{n:064x}",
        "request": {"model_id": f"m{n}", "url": f"org/m{n}", "model_format": "diffusers"},
        "status": status,
        "attempts": 1,
        "submitted_at": "2026-11-25T10:00:00Z",
        "last_attempt_at": "2026-11-25T10:00:00Z",
        "response": {"status": "success", "message": "model load started"},
    }
    fields.update(extra)
    return ModelRecord(**fields)


# Records as apply leaves them, with what makes a text hard to count: "${VAR}" in URLs,
# commas, brackets, quotes and backslashes in strings, answers that nest, no answer.
RECORDS = {
    "civitai": rec(1, request={"model_id": "civitai", "url": TOKEN_URL}),
    "commas": rec(2, request={"model_name": "Realistic Vision, v6 [B1] {noVAE}"}),
    "quoted": rec(3, "failed", last_error='HTTP 400: {"url": ["bad \\\\ path"]}', cause="rejected"),
    "fields": rec(
        4,
        "failed",
        response={"status": "error", "message": {"url": ["The url field is required."]}},
        cause="rejected",
    ),
    "pending": rec(5, "pending", response=None, attempts=0),
    "empty": rec(6, request={}, response={}),
    "unicode-é": rec(7, request={"model_name": "Modèle ✓ \u2028 ${"}),
}
# The usual state: no container in a request or an answer, which the text's count of
# commas and brackets proves without a walk of the records.
PLAIN = {
    "civitai": RECORDS["civitai"],
    "quoted": rec(3, "failed", last_error="HTTP 400: the url field is required", cause="rejected"),
    "pending": RECORDS["pending"],
    "empty": RECORDS["empty"],
    "unicode-é": RECORDS["unicode-é"],
}
STATES = {"hard": RECORDS, "plain": PLAIN}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "prod.state.json"


def write_state(path: Path, records: dict[str, ModelRecord]) -> None:
    with StateStore(path, ENDPOINT) as store:
        for model_id, record in records.items():
            store.record(model_id, record)


@pytest.fixture
def strict_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Read every snapshot with the strict parser alone."""
    monkeypatch.setattr(snapshot, "_quick_snapshot", lambda raw: None)
    yield


@pytest.fixture
def quick_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test whose snapshot the C parser alone cannot vouch for."""

    def refuse(raw: bytes) -> Any:
        raise AssertionError("the snapshot went to the strict parser")

    monkeypatch.setattr(snapshot, "_document", refuse)
    yield


def outcome(path: Path) -> Any:
    """What reading ``path`` gives: its models, or the error's words."""
    try:
        state = read_state(path, ENDPOINT)
    except StateError as exc:
        return str(exc)
    return (state.lineage, state.serial, dict(state.models))


def strict_outcome(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(snapshot, "_quick_snapshot", lambda raw: None)
        return outcome(path)


# --------------------------------------------------------------------------- layout


def test_snapshot_is_a_line_per_model_sorted_by_id(path: Path) -> None:
    write_state(path, dict(reversed(RECORDS.items())))
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith('{"endpoint":')
    assert lines[0].endswith(',"models":{')
    assert lines[-2:] == ["}}", ""]
    body = lines[1:-2]
    assert [json.loads("{" + line.removesuffix(",") + "}").popitem()[0] for line in body] == (
        sorted(RECORDS)
    )
    assert [line.endswith(",") for line in body] == [True] * (len(body) - 1) + [False]
    for line in body:
        model_id, data = json.loads("{" + line.removesuffix(",") + "}").popitem()
        encoded = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert line.removesuffix(",") == json.dumps(model_id, ensure_ascii=False) + ":" + encoded
    assert "Modèle ✓" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes


def test_snapshot_is_byte_stable(path: Path) -> None:
    write_state(path, RECORDS)
    first = path.read_bytes()
    state = read_state(path, ENDPOINT)
    assert dict(state.models) == RECORDS
    again = dump_snapshot(state.lineage, state.serial, state.endpoint, state.models)
    assert again == first
    # Through the writer too: a change and its undoing give the same lines back.
    with StateStore(path, ENDPOINT) as store:
        store.record("zz", rec(9))
    with StateStore(path, ENDPOINT) as store:
        store.forget(["zz"])
    assert path.read_bytes().split(b"\n")[1:] == first.split(b"\n")[1:]
    assert json.loads(path.read_bytes())["serial"] == json.loads(first)["serial"] + 2


def test_snapshot_without_models_is_one_document(path: Path) -> None:
    data = dump_snapshot("6f1c", 0, ENDPOINT, {})
    assert data == (
        b'{"endpoint":"' + ENDPOINT.encode() + b'","format_version":1,"lineage":"6f1c",'
        b'"serial":0,"models":{\n}}\n'
    )
    assert json.loads(data)["models"] == {}


def test_old_indented_snapshot_is_read_then_rewritten_a_line_per_model(path: Path) -> None:
    write_state(path, RECORDS)
    doc = json.loads(path.read_bytes())
    # As modelsync 0.1 wrote it.
    old = (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    path.write_bytes(old)
    assert dict(read_state(path, ENDPOINT).models) == RECORDS
    with StateStore(path, ENDPOINT) as store:
        store.record("new", rec(8))
    new = path.read_bytes()
    assert new.count(b"\n") == len(RECORDS) + 1 + 2
    assert json.loads(new)["models"] == {**doc["models"], "new": rec(8).to_json()}
    assert path.with_name(path.name + ".backup").read_bytes() == old
    assert dict(read_state(path, ENDPOINT).models) == {**RECORDS, "new": rec(8)}


# --------------------------------------------------------------------------- reading


@pytest.mark.usefixtures("quick_only")
@pytest.mark.parametrize("records", list(STATES.values()), ids=list(STATES))
def test_what_modelsync_writes_is_read_by_the_c_parser(
    path: Path, records: dict[str, ModelRecord]
) -> None:
    write_state(path, records)
    assert dict(read_state(path, ENDPOINT).models) == records


@pytest.mark.usefixtures("quick_only")
def test_the_usual_state_is_proven_without_a_walk_of_its_records(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(path, PLAIN)
    # Neither is needed when no request or answer holds a container.
    monkeypatch.setattr(snapshot, "_below", None)
    monkeypatch.setattr(snapshot, "json_depth", None)
    assert dict(read_state(path, ENDPOINT).models) == PLAIN


@pytest.mark.usefixtures("quick_only")
def test_a_reformatted_snapshot_is_read_by_the_c_parser(path: Path) -> None:
    write_state(path, RECORDS)
    doc = json.loads(path.read_bytes())
    path.write_text(json.dumps(doc, indent="\t", separators=(" ,", " : ")), encoding="utf-8")
    assert dict(read_state(path, ENDPOINT).models) == RECORDS


def _line_edit(model_id: str, *changes: str) -> Callable[[bytes], bytes]:
    """Replace, in the line of ``model_id``, each old text by the new one that follows it."""

    def edit(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        prefix = json.dumps(model_id).encode() + b":"
        found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        if not found:
            raise LookupError(model_id)
        (index,) = found
        for old, new in zip(changes[0::2], changes[1::2], strict=True):
            assert old.encode() in lines[index], (old, lines[index])
            lines[index] = lines[index].replace(old.encode(), new.encode(), 1)
        return b"\n".join(lines)

    edit.model_id = model_id  # type: ignore[attr-defined]  # which states it applies to
    return edit


def _repeat_line(model_id: str) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        lines = raw.split(b"\n")
        prefix = json.dumps(model_id).encode() + b":"
        found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        if not found:
            raise LookupError(model_id)
        (index,) = found
        line = lines[index] if lines[index].endswith(b",") else lines[index] + b","
        return b"\n".join([*lines[:index], line, *lines[index:]])

    return edit


# Each edit: how it changes the file, and the words of its refusal (None: it is read).
EDITS: dict[str, tuple[Callable[[bytes], bytes], str | None]] = {
    "duplicate header key": (
        lambda raw: raw.replace(b'"serial":', b'"serial":3,"serial":', 1),
        "duplicate key 'serial'",
    ),
    "duplicate model id": (_repeat_line("pending"), "duplicate key 'pending'"),
    "duplicate record key": (
        _line_edit("civitai", '"status":"submitted"', '"status":"failed","status":"submitted"'),
        "duplicate key 'status'",
    ),
    "duplicate key, same value": (
        _line_edit("civitai", '"attempts":1', '"attempts":1,"attempts":1'),
        "duplicate key 'attempts'",
    ),
    "duplicate request key": (
        _line_edit("civitai", '"url":', '"url":"org/other","url":'),
        "duplicate key 'url'",
    ),
    "duplicate key of an answer that nests": (
        _line_edit("fields", '"status":"error"', '"status":"error","status":"error"'),
        "duplicate key 'status'",
    ),
    "duplicate key inside a nested answer": (
        _line_edit("fields", '{"url":[', '{"url":[],"url":['),
        "duplicate key 'url'",
    ),
    "duplicate key whose first value is an object": (
        _line_edit("pending", '"response":null', '"response":{"a":1,"b":[2,3]},"response":null'),
        "duplicate key 'response'",
    ),
    "duplicate key in a string-heavy line": (
        _line_edit("quoted", '"cause":"rejected"', '"cause":"conflict","cause":"rejected"'),
        "duplicate key 'cause'",
    ),
    "NaN": (_line_edit("civitai", '"attempts":1', '"attempts":NaN'), "NaN is not valid JSON"),
    "Infinity in an answer": (
        _line_edit("civitai", '"status":"success"', '"status":Infinity'),
        "Infinity is not valid JSON",
    ),
    "-Infinity": (
        _line_edit("pending", '"response":null', '"response":{"x":-Infinity}'),
        "-Infinity is not valid JSON",
    ),
    "1e999": (
        _line_edit("pending", '"response":null', '"response":{"x":1e999}'),
        "the number 1e999 is too large",
    ),
    "a number of 5,000 digits": (
        _line_edit("pending", '"response":null', '"response":{"x":' + "9" * 5000 + "}"),
        "a number of 5,000 digits is too large",
    ),
    "a bad record": (
        _line_edit("pending", '"status":"pending"', '"status":"done"'),
        "models['pending'].status: 'done' is not one of submitted, failed, pending",
    ),
    "an unknown record field": (
        _line_edit("pending", '"attempts":0', '"attempts":0,"extra":1'),
        "models['pending']: unknown field(s) 'extra'",
    ),
    "a bad record and a duplicate key": (
        _line_edit("civitai", '"status":"submitted"', '"status":"done","attempts":2'),
        "duplicate key 'attempts'",
    ),
    "a line cut short": (
        lambda raw: raw.replace(b"\n}}\n", b"\n"),
        "is not valid JSON",
    ),
    "keys in another order": (
        _line_edit(
            "civitai",
            '{"attempts":1,"fingerprint"',
            '{"fingerprint"',
            '"submitted_at":"2026-11-25T10:00:00Z"}',
            '"submitted_at":"2026-11-25T10:00:00Z","attempts":1}',
        ),
        None,
    ),
    "spaces and newlines": (
        _line_edit("civitai", '"request":{', '"request" :\n\t{ '),
        None,
    ),
    "a float and an escape": (
        _line_edit("pending", '"response":null', '"response":{"x":1.5e3,"\\u0079":"\\"}"}'),
        None,
    ),
    "a CRLF file": (lambda raw: raw.replace(b"\n", b"\r\n"), None),
    "a byte order mark": (lambda raw: b"\xef\xbb\xbf" + raw, None),
    # The document, models and the record, then the answer's levels.
    "nested 64 deep": (
        _line_edit("pending", '"response":null', '"response":' + '{"x":' * 61 + "1" + "}" * 61),
        None,
    ),
    "nested 65 deep": (
        _line_edit("pending", '"response":null', '"response":' + '{"x":' * 62 + "1" + "}" * 62),
        "is nested more than 64 levels deep",
    ),
    "nested 65 deep in lists": (
        _line_edit("pending", '"response":null', '"response":{"x":' + "[" * 61 + "]" * 61 + "}"),
        "is nested more than 64 levels deep",
    ),
}


def _applicable() -> list[tuple[str, str]]:
    """Every (edit, state) pair where the state has the line the edit changes."""
    return [
        (case, state)
        for case in sorted(EDITS)
        for state in sorted(STATES)
        if getattr(EDITS[case][0], "model_id", None) in (None, *STATES[state])
    ]


@pytest.mark.parametrize(("case", "state"), _applicable())
def test_hand_edits_are_read_or_refused_as_the_strict_parser_does(
    path: Path, case: str, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, refusal = EDITS[case]
    write_state(path, STATES[state])
    edited = edit(path.read_bytes())
    assert edited != path.read_bytes()
    path.write_bytes(edited)
    got, strict = outcome(path), strict_outcome(path, monkeypatch)
    assert got == strict
    if refusal is None:
        assert not isinstance(got, str), got
    else:
        assert isinstance(got, str)
        assert refusal in got
        assert "would submit every model again" in got


def test_the_depth_edits_are_64_and_65_deep() -> None:
    assert json_depth(b'{"models":{"a":{"response":' + b'{"x":' * 61 + b"1" + b"}" * 64) == 64
    assert json_depth(b'{"models":{"a":{"response":' + b'{"x":' * 62 + b"1" + b"}" * 65) == 65


# --------------------------------------------------------------------------- counting


class _Object(list):  # type: ignore[type-arg]
    """An object as its pairs, every key kept as written."""


def _reference_shape(text: str) -> Shape:
    """The shape the strict way: a parse that keeps every key as written."""
    commas = objects = arrays = 0

    def pairs(items: list[tuple[str, Any]]) -> _Object:
        nonlocal commas, objects
        objects += 1
        commas += max(len(items) - 1, 0)
        return _Object(items)

    def walk(value: Any) -> None:
        nonlocal commas, arrays
        if isinstance(value, _Object):
            for _, item in value:
                walk(item)
        elif isinstance(value, list):
            arrays += 1
            commas += max(len(value) - 1, 0)
            for item in value:
                walk(item)

    walk(json.loads(text, object_pairs_hook=pairs))
    return Shape(commas, objects, arrays)


_keys = st.text(alphabet='ab,{[:"\\$ é', max_size=4)
_scalars = st.none() | st.booleans() | st.integers() | _keys
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.lists(st.tuples(_keys, inner), max_size=4),
    max_leaves=25,
)


def _dump(value: Any, indent: int | None) -> str:
    """JSON text of ``value``, where a list of pairs is an object (so keys may repeat)."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        members = [f"{json.dumps(k)}:{_dump(v, indent)}" for k, v in value]
        gap = "\n" + " " * (indent or 0) if indent is not None else ""
        return "{" + gap + ("," + gap).join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v, indent) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values, st.none() | st.integers(0, 3))
def test_json_shape_counts_what_is_outside_the_strings(value: Any, indent: int | None) -> None:
    text = _dump(value, indent)
    assert json_shape(text.encode()) == _reference_shape(text)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        (r'{"a":"${X}","b":["{,[","\\",{}]}', Shape(3, 2, 1)),
        (r'{"a\"{":"$","b":"$${[","c":"\\\"$"}', Shape(2, 1, 0)),
        ('{"a":{"a":1,"a":2}}', Shape(1, 2, 0)),
        ("[]", Shape(0, 0, 1)),
        ("{}", Shape(0, 1, 0)),
    ],
)
def test_json_shape_examples(text: str, shape: Shape) -> None:
    assert json_shape(text.encode()) == shape == _reference_shape(text)


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("record", list(RECORDS.values()), ids=list(RECORDS))
def test_adopted_record_is_the_record(record: ModelRecord) -> None:
    data = json.loads(json.dumps(record.to_json()))
    adopted = ModelRecord.adopt_json(data)
    assert adopted == record == ModelRecord.from_json(data, where="x")
    assert [getattr(adopted, f.name) for f in dataclasses.fields(ModelRecord)] == [
        getattr(record, f.name) for f in dataclasses.fields(ModelRecord)
    ]
    assert vars(adopted) is data
    with pytest.raises(dataclasses.FrozenInstanceError):
        adopted.status = "failed"  # type: ignore[misc]


def test_adopt_json_knows_every_field() -> None:
    # adopt_json makes a record without __init__: a new field must be taught to it.
    assert tuple(f.name for f in dataclasses.fields(ModelRecord)) == RECORD_FIELDS
    defaults = {f.name for f in dataclasses.fields(ModelRecord) if f.name != "cause"}
    assert defaults == set(rec().to_json())


@pytest.mark.parametrize(
    "data",
    [
        {**rec().to_json(), "cause": None},
        {**rec().to_json(), "attempts": True},
        {**rec().to_json(), "status": ["submitted"]},
        {**rec().to_json(), "cause": ["rejected"]},
        {**rec().to_json(), "extra": 1},
        {k: v for k, v in rec().to_json().items() if k != "last_error"},
        [1, 2],
        "sha256:1",
    ],
)
def test_from_json_agrees_with_the_field_by_field_path(data: Any) -> None:
    def build(path: Callable[[], ModelRecord]) -> Any:
        try:
            return path()
        except StateError as exc:
            return str(exc)

    quick = build(lambda: ModelRecord.from_json(data, where="models['a']"))
    careful = build(lambda: ModelRecord._from_other_json(data, "models['a']"))
    assert quick == careful


def test_to_json_copies_unless_told_not_to() -> None:
    record = RECORDS["fields"]
    copied, shared = record.to_json(), record.to_json(copy=False)
    assert copied == shared
    assert copied["response"] is not record.response
    assert copied["response"]["message"] is not record.response["message"]  # type: ignore[index]
    assert shared["request"] is record.request and shared["response"] is record.response


# --------------------------------------------------------------------------- the rest


def test_backup_lineage_is_read_from_its_first_line(path: Path, tmp_path: Path) -> None:
    write_state(path, {"a": rec(1)})
    write_state(path, {"b": rec(2)})
    backup = path.with_name(path.name + ".backup")
    other = tmp_path / "other.state.json"
    write_state(other, {"a": rec(1)})
    # Another state's backup, its tail damaged: the header line still names its lineage.
    backup.write_bytes(other.read_bytes()[:-20])
    with pytest.raises(StateError, match=r"has lineage .*, but its backup .* has lineage"):
        read_state(path, ENDPOINT)


def test_reading_pauses_the_collector_and_restores_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(path, {"a": rec(1)})
    seen: list[bool] = []

    def spy(raw: bytes) -> Any:
        seen.append(gc.isenabled())
        return fileio.quick_loads(raw)

    monkeypatch.setattr(snapshot, "quick_loads", spy)
    assert gc.isenabled()
    read_state(path, ENDPOINT)
    assert gc.isenabled()
    gc.disable()
    try:
        read_state(path, ENDPOINT)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False, False]


def test_read_file_reads_past_the_size_it_was_told(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path.write_bytes(b"x" * 10_000)
    real_stat, real_fstat = os.stat, os.fstat

    def shrunk(st: os.stat_result) -> os.stat_result:
        fields = list(st)
        fields[6] = 100  # st_size: as if the file grew after it was looked at
        return os.stat_result(fields)

    with monkeypatch.context() as patch:
        patch.setattr(os, "stat", lambda p: shrunk(real_stat(p)))
        patch.setattr(os, "fstat", lambda fd: shrunk(real_fstat(fd)))
        assert fileio.read_file(path) == b"x" * 10_000
        with pytest.raises(fileio.NotAFile, match="grew over the limit of 5,000 bytes"):
            fileio.read_file(path, limit=5_000)
