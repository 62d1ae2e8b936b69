"""The planner (pure, direct calls) and the fingerprints it compares (DESIGN §2, §3, §4)."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import inspect
import io
import json
import os
import socket
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from modelsync.errors import ExitCode, UsageError
from modelsync.manifest import Manifest, load_manifest
from modelsync.plan import (
    FieldChange,
    Plan,
    Selection,
    Selector,
    force_load_for,
    make_plan,
    parse_selectors,
)
from modelsync.records import SENT_FIELDS, ModelRecord, ModelSpec, State, fingerprint

ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"


def spec(model_id: str = "m1", **changes: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "model_id": model_id,
        "url": f"org/{model_id}",
        "model_format": "diffusers",
        "model_category": "stable_diffusion",
        "model_name": model_id,
        "revision": "fp16",
        "model_visibility": "private",
        "hf_upload": "no",
        "force_load": None,
    }
    fields.update(changes)
    return ModelSpec(**fields)


def manifest(*specs: ModelSpec) -> Manifest:
    return Manifest(
        path="manifests/prod.yaml",
        endpoint=None,
        api_key_env="MODELSYNC_API_KEY",
        models=tuple(specs),
    )


def record(
    of: ModelSpec, status: str = "submitted", force_load: str = "no", **request_changes: Any
) -> ModelRecord:
    """A record of ``of`` as apply would have written it, with some request fields changed."""
    request: dict[str, Any] = of.request(force_load)
    for name, value in request_changes.items():
        if value is None:
            request.pop(name, None)
        else:
            request[name] = value
    return ModelRecord(
        fingerprint=fingerprint(request),
        request=request,
        status=status,  # type: ignore[arg-type]
        attempts=1,
        last_error="HTTP 500: boom" if status == "failed" else None,
    )


def state(records: Mapping[str, ModelRecord] | None = None) -> State:
    return State(
        location="/nonexistent/modelsync/prod.state.json",
        lineage="6f1c0000-0000-4000-8000-000000000000",
        serial=3,
        endpoint=ENDPOINT,
        models=MappingProxyType(dict(records or {})),
        exists=records is not None,
    )


def actions(plan: Plan) -> list[tuple[str, str]]:
    return [(c.model_id, c.action) for c in plan.changes]


# --------------------------------------------------------------------------- actions


def test_plan_create_when_the_model_is_not_in_the_state() -> None:
    a = spec("a")
    plan = make_plan(manifest(a), state())
    (change,) = plan.changes
    assert (change.model_id, change.action, change.force_load) == ("a", "create", "no")
    assert dict(change.fields) == {}
    assert change.spec is a
    assert change.previous is None
    assert change.submits
    assert plan.summary == {
        "create": 1,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 0,
        "orphan": 0,
    }


def test_plan_update_lists_each_changed_field_before_and_after() -> None:
    a = spec("a", revision="fp16", model_name="New name", model_subcategory=None)
    old = record(a, revision="fp32", model_name="Old name", model_subcategory="lora")
    plan = make_plan(manifest(a), state({"a": old}))
    (change,) = plan.changes
    assert (change.action, change.force_load) == ("update", "yes")
    assert change.previous is old
    assert dict(change.fields) == {
        "model_name": FieldChange("Old name", "New name"),
        "revision": FieldChange("fp32", "fp16"),
        "model_subcategory": FieldChange("lora", None),
    }
    # Sent fields in the order they are sent; fields that disappeared come last.
    assert list(change.fields) == ["model_name", "revision", "model_subcategory"]


def test_plan_update_shows_a_field_that_was_added() -> None:
    a = spec("a", model_image="https://cdn.example/a.png")
    old = record(a, model_image=None)
    (change,) = make_plan(manifest(a), state({"a": old})).changes
    assert change.action == "update"
    assert dict(change.fields) == {"model_image": FieldChange(None, "https://cdn.example/a.png")}


def test_plan_update_never_lists_force_load_as_a_field() -> None:
    a = spec("a", revision="fp16", force_load="no")
    old = record(a, force_load="yes", revision="fp32")
    (change,) = make_plan(manifest(a), state({"a": old})).changes
    assert change.action == "update"
    assert dict(change.fields) == {"revision": FieldChange("fp32", "fp16")}


@pytest.mark.parametrize("status", ["failed", "pending"])
def test_plan_retry_when_the_last_run_did_not_submit(status: str) -> None:
    a = spec("a")
    old = record(a, status=status)
    (change,) = make_plan(manifest(a), state({"a": old})).changes
    assert (change.action, change.force_load) == ("retry", "yes")
    assert dict(change.fields) == {}  # same request: nothing changed but the status
    assert change.previous is old
    assert change.submits


def test_plan_retry_of_a_changed_model_shows_its_fields() -> None:
    a = spec("a", revision="fp16")
    old = record(a, status="failed", revision="fp32")
    (change,) = make_plan(manifest(a), state({"a": old})).changes
    assert change.action == "retry"
    assert dict(change.fields) == {"revision": FieldChange("fp32", "fp16")}


def test_plan_unchanged_when_submitted_with_the_same_fingerprint() -> None:
    a = spec("a", labels=MappingProxyType({"team": "new"}))
    # Recorded with another force_load and before a label change: neither is sent content.
    old = record(spec("a", labels=MappingProxyType({"team": "old"})), force_load="yes")
    (change,) = make_plan(manifest(a), state({"a": old})).changes
    assert (change.action, change.force_load) == ("unchanged", None)
    assert dict(change.fields) == {}
    assert not change.submits
    assert change.previous is old


def test_plan_orphans_come_last_sorted_and_are_not_submitted() -> None:
    b, a = spec("b"), spec("a")
    gone = record(spec("zz-gone"))
    older = record(spec("old"))
    plan = make_plan(manifest(b, a), state({"zz-gone": gone, "a": record(a), "old": older}))
    assert actions(plan) == [
        ("b", "create"),
        ("a", "unchanged"),
        ("old", "orphan"),
        ("zz-gone", "orphan"),
    ]
    orphan = plan.changes[2]
    assert orphan.force_load is None
    assert orphan.spec is None
    assert orphan.previous is older
    assert not orphan.submits
    assert dict(orphan.fields) == {}


def test_plan_summary_counts_every_action() -> None:
    specs = [spec(f"c{i}") for i in range(3)]
    upd = spec("u", revision="fp16")
    ret1, ret2 = spec("r1"), spec("r2")
    same = spec("s")
    records = {
        "u": record(upd, revision="fp32"),
        "r1": record(ret1, status="failed"),
        "r2": record(ret2, status="pending"),
        "s": record(same),
        "o1": record(spec("o1")),
        "o2": record(spec("o2")),
    }
    plan = make_plan(manifest(*specs, upd, ret1, ret2, same), state(records))
    assert plan.summary == {
        "create": 3,
        "update": 1,
        "retry": 2,
        "conflict": 0,
        "unchanged": 1,
        "orphan": 2,
    }
    assert [c.model_id for c in plan.to_submit] == ["c0", "c1", "c2", "u", "r1", "r2"]
    assert plan.has_changes


def test_plan_with_only_unchanged_and_orphans_has_no_changes() -> None:
    a = spec("a")
    plan = make_plan(manifest(a), state({"a": record(a), "gone": record(spec("gone"))}))
    assert plan.summary == {
        "create": 0,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 1,
        "orphan": 1,
    }
    assert plan.to_submit == ()
    assert not plan.has_changes


def test_plan_of_an_empty_manifest_and_no_state_is_empty() -> None:
    plan = make_plan(manifest(), state())
    assert plan.changes == ()
    assert plan.summary == {
        "create": 0,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 0,
        "orphan": 0,
    }
    assert not plan.has_changes


# --------------------------------------------------------------------------- force_load


@pytest.mark.parametrize(
    ("written", "action", "expected"),
    [
        (None, "create", "no"),
        (None, "update", "yes"),
        (None, "retry", "yes"),
        ("yes", "create", "yes"),
        ("no", "update", "no"),
        ("no", "retry", "no"),
        ("yes", "update", "yes"),
    ],
)
def test_force_load_policy_explicit_value_wins(
    written: str | None, action: str, expected: str
) -> None:
    a = spec("a", force_load=written, revision="fp16")
    assert force_load_for(a, action) == expected  # type: ignore[arg-type]
    records = {
        "create": {},
        "update": {"a": record(a, revision="fp32")},
        "retry": {"a": record(a, status="pending")},
    }[action]
    (change,) = make_plan(manifest(a), state(records)).changes
    assert (change.action, change.force_load) == (action, expected)


# --------------------------------------------------------------------------- selection


def _catalogue() -> tuple[Manifest, State]:
    specs = [
        spec("sdxl-base", labels=MappingProxyType({"team": "editing", "tier": "prod"})),
        spec("sdxl-lora", labels=MappingProxyType({"team": "editing"})),
        spec("sd15-portrait", labels=MappingProxyType({"team": "portraits", "tier": "prod"})),
        spec("flux-dev", labels=MappingProxyType({})),
    ]
    return manifest(*specs), state({"orphan-1": record(spec("orphan-1"))})


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection(only=("sdxl-*",)), ["sdxl-base", "sdxl-lora"]),
        (Selection(only=("sdxl-base", "flux-*")), ["sdxl-base", "flux-dev"]),
        (Selection(only=("SDXL-*",)), []),  # globs are case-sensitive, like model ids
        (Selection(exclude=("sdxl-*",)), ["sd15-portrait", "flux-dev"]),
        (Selection(exclude=("sdxl-base", "*-dev")), ["sdxl-lora", "sd15-portrait"]),
        (Selection(only=("sd*",), exclude=("*-lora",)), ["sdxl-base", "sd15-portrait"]),
        (Selection(only=("sdxl-?ase",)), ["sdxl-base"]),
        (Selection(selectors=parse_selectors(["team=editing"])), ["sdxl-base", "sdxl-lora"]),
        (
            Selection(selectors=parse_selectors(["team!=editing"])),
            ["sd15-portrait", "flux-dev"],  # a missing label is "not equal"
        ),
        (Selection(selectors=parse_selectors(["team=editing,tier=prod"])), ["sdxl-base"]),
        (Selection(selectors=parse_selectors(["team=editing", "tier=prod"])), ["sdxl-base"]),
        (Selection(selectors=parse_selectors(["tier!=prod"])), ["sdxl-lora", "flux-dev"]),
        (
            Selection(only=("sdxl-*", "sd15-*"), selectors=parse_selectors(["tier=prod"])),
            ["sdxl-base", "sd15-portrait"],
        ),
    ],
)
def test_plan_selection_picks_a_subset_and_drops_orphans(
    selection: Selection, expected: list[str]
) -> None:
    the_manifest, the_state = _catalogue()
    plan = make_plan(the_manifest, the_state, selection)
    assert selection.active
    assert [c.model_id for c in plan.changes] == expected
    assert all(c.action == "create" for c in plan.changes)
    assert plan.summary == {
        "create": len(expected),
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 0,
        "orphan": 0,
    }


def test_plan_without_selection_reports_orphans() -> None:
    the_manifest, the_state = _catalogue()
    plan = make_plan(the_manifest, the_state)
    assert not Selection().active
    assert actions(plan)[-1] == ("orphan-1", "orphan")
    assert plan.summary["orphan"] == 1


def test_unmatched_patterns_are_the_likely_typos() -> None:
    selection = Selection(only=("sdxl-*", "sdxl-bsae"), exclude=("flux-*", "nope"))
    assert selection.unmatched_patterns(["sdxl-base", "flux-dev"]) == ["sdxl-bsae", "nope"]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["team=editing"], [Selector("team", "editing")]),
        (["team!=editing"], [Selector("team", "editing", negate=True)]),
        (
            ["team=editing,tier!=dev", "gpu=a100"],
            [
                Selector("team", "editing"),
                Selector("tier", "dev", negate=True),
                Selector("gpu", "a100"),
            ],
        ),
        (
            [" team = editing , tier != dev "],
            [Selector("team", "editing"), Selector("tier", "dev", True)],
        ),
        (["team="], [Selector("team", "")]),
        ([], []),
    ],
)
def test_parse_selectors(texts: list[str], expected: list[Selector]) -> None:
    assert list(parse_selectors(texts)) == expected


def test_selector_str_round_trips() -> None:
    assert [str(s) for s in parse_selectors(["a=b,c!=d"])] == ["a=b", "c!=d"]


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("team", "team"),
        ("=editing", "=editing"),
        ("!=editing", "!=editing"),
        ("team==editing", "team==editing"),
        ("a=b=c", "a=b=c"),
        ("team=editing,", ""),
        ("team=editing,,tier=prod", ""),
        ("", ""),
    ],
)
def test_bad_selector_is_a_usage_error(text: str, part: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_selectors([text])
    assert info.value.exit_code == ExitCode.USAGE
    assert int(info.value.exit_code) == 64
    assert str(info.value) == (
        f"--selector {part!r} is not 'key=value' or 'key!=value' "
        "(labels are set under 'labels:' in the manifest)"
    )


# --------------------------------------------------------------------------- purity


def test_make_plan_takes_objects_only() -> None:
    params = inspect.signature(make_plan).parameters
    assert list(params) == ["manifest", "state", "selection"]


def test_make_plan_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = spec("a"), spec("b", revision="fp16"), spec("c")
    the_manifest = manifest(a, b, c)
    the_state = state(
        {"b": record(b, revision="fp32"), "c": record(c, status="failed"), "x": record(spec("x"))}
    )

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("make_plan did I/O")

    for module, name in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (os, "stat"),
        (os, "lstat"),
        (os, "listdir"),
        (os, "scandir"),
        (os, "replace"),
        (os, "unlink"),
        (os, "mkdir"),
        (socket.socket, "connect"),
        (socket, "create_connection"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    plan = make_plan(the_manifest, the_state, Selection())
    monkeypatch.undo()
    assert actions(plan) == [("a", "create"), ("b", "update"), ("c", "retry"), ("x", "orphan")]


def test_make_plan_does_not_change_its_inputs() -> None:
    a = spec("a", revision="fp16")
    old = record(a, revision="fp32")
    before = old.to_json()
    the_state = state({"a": old})
    make_plan(manifest(a), the_state)
    assert old.to_json() == before
    assert dict(the_state.models) == {"a": old}


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_sha256_of_the_canonical_json_without_force_load() -> None:
    request = {"url": "org/é", "model_id": "a", "force_load": "yes"}
    canonical = '{"model_id":"a","url":"org/é"}'
    expected = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert fingerprint(request) == expected


def test_fingerprint_ignores_key_order() -> None:
    a = spec("a", model_subcategory="lora", model_image="https://cdn.example/a.png")
    request = a.request("no")
    reordered = dict(reversed(list(request.items())))
    assert list(reordered) != list(request)
    assert fingerprint(reordered) == fingerprint(request) == a.fingerprint


@pytest.mark.parametrize(
    "text",
    ["plain", "é ü 日本", 'quote " and \\ back', "tab\tnew\nline\x01", "emoji 🎨", "</script>"],
)
def test_spec_fingerprint_is_json_dumps_of_its_request(text: str) -> None:
    # ModelSpec writes its canonical JSON itself (fast); it must be json.dumps's, byte for byte.
    a = spec("a", model_name=text, model_image="https://cdn.example/" + text)
    canonical = json.dumps(
        {k: v for k, v in a.request("no").items() if k != "force_load"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    expected = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert a.fingerprint == expected == fingerprint(a.request("yes"))


def test_fingerprint_ignores_force_load() -> None:
    a = spec("a")
    assert fingerprint(a.request("yes")) == fingerprint(a.request("no"))
    assert spec("a", force_load="yes").fingerprint == spec("a", force_load=None).fingerprint
    assert fingerprint({"model_id": "a"}) == fingerprint({"model_id": "a", "force_load": "yes"})


def test_fingerprint_ignores_labels() -> None:
    plain = spec("a")
    labelled = spec("a", labels=MappingProxyType({"team": "portraits"}))
    assert plain.fingerprint == labelled.fingerprint


# Every field that is sent, with a value other than spec()'s.
_OTHER_VALUES = {
    "model_id": "m2",
    "url": "org/other",
    "model_format": "safetensors",
    "model_category": "lora",
    "model_subcategory": "lora",
    "model_name": "Other name",
    "model_image": "https://cdn.example/m1.png",
    "revision": "fp32",
    "model_visibility": "public",
    "hf_upload": "yes",
}


def test_fingerprint_cases_cover_every_sent_field() -> None:
    assert set(_OTHER_VALUES) == set(SENT_FIELDS) - {"force_load"}


@pytest.mark.parametrize("name", sorted(_OTHER_VALUES))
def test_fingerprint_changes_with_every_sent_field(name: str) -> None:
    base = spec("m1")
    changes: dict[str, Any] = {name: _OTHER_VALUES[name]}
    changed = dataclasses.replace(base, **changes)
    assert changed.request("no")[name] == _OTHER_VALUES[name]
    assert changed.fingerprint != base.fingerprint
    assert fingerprint(changed.request("no")) == changed.fingerprint


_SECRET_MANIFEST = """\
version: 1
models:
  - model_id: majicmix-realistic
    url: https://civitai.com/api/download/models/132760?type=Model&token=${CIVITAI_TOKEN}
    model_format: safetensors
    model_category: stable_diffusion
"""


def test_fingerprint_keeps_the_secret_template_not_its_value(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_SECRET_MANIFEST, encoding="utf-8")
    one = load_manifest(path, {"CIVITAI_TOKEN": "token-value-one"}).models[0]
    two = load_manifest(path, {"CIVITAI_TOKEN": "token-value-two"}).models[0]
    template = "https://civitai.com/api/download/models/132760?type=Model&token=${CIVITAI_TOKEN}"
    assert one.url == two.url == template
    assert one.request("no")["url"] == template
    assert one.body("no")["url"].endswith("token=token-value-one")
    assert two.body("no")["url"].endswith("token=token-value-two")
    assert one.fingerprint == two.fingerprint
    assert one.fingerprint == fingerprint(
        {
            "model_id": "majicmix-realistic",
            "url": template,
            "model_format": "safetensors",
            "model_category": "stable_diffusion",
            "model_name": "majicmix-realistic",
            "revision": "fp16",
            "model_visibility": "private",
            "hf_upload": "no",
        }
    )


def test_fingerprint_of_a_manifest_ignores_key_order_labels_and_force_load(
    tmp_path: Path,
) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(
        textwrap.dedent(
            """\
            version: 1
            models:
              - model_id: vae
                url: org/vae
                model_format: diffusers
                model_category: vae
                revision: fp32
            """
        ),
        encoding="utf-8",
    )
    second = tmp_path / "b.yaml"
    second.write_text(
        textwrap.dedent(
            """\
            version: 1
            defaults: {force_load: yes}
            models:
              - revision: fp32
                labels: {team: editing}
                model_category: vae
                model_format: diffusers
                url: org/vae
                model_id: vae
            """
        ),
        encoding="utf-8",
    )
    a = load_manifest(first, {}).models[0]
    b = load_manifest(second, {}).models[0]
    assert (a.force_load, b.force_load) == (None, "yes")
    assert a.fingerprint == b.fingerprint


# ------------------------------------------------------- causes, retries and conflicts (§4)


def failed(of: ModelSpec, cause: str | None, *, submitted_before: bool = False) -> ModelRecord:
    """A failed record of ``of`` with a cause (None: a state written before causes)."""
    base = record(of, "failed")
    return dataclasses.replace(
        base,
        cause=cause,  # type: ignore[arg-type]
        submitted_at="2026-11-25T10:00:00Z" if submitted_before else None,
    )


@pytest.mark.parametrize(
    ("cause", "submitted_before", "force_load"),
    [
        ("maybe_reached", False, "yes"),  # our own request may have created it
        ("never_sent", False, "no"),  # a create that never left: still a create
        ("rejected", False, "no"),  # a create the server refused: still a create
        ("never_sent", True, "yes"),  # an update that never left: still an update
        ("rejected", True, "yes"),
        (None, False, "yes"),  # a record from before causes: as 0.1 did
    ],
)
def test_plan_retry_sends_what_its_cause_calls_for(
    cause: str | None, submitted_before: bool, force_load: str
) -> None:
    s = spec()
    plan = make_plan(
        manifest(s), state({"m1": failed(s, cause, submitted_before=submitted_before)})
    )
    (change,) = plan.changes
    assert (change.action, change.force_load) == ("retry", force_load)


def test_plan_retry_after_pending_sends_yes() -> None:
    s = spec()
    plan = make_plan(manifest(s), state({"m1": record(s, "pending")}))
    assert [(c.action, c.force_load) for c in plan.changes] == [("retry", "yes")]


def test_plan_conflict_is_never_retried_on_its_own() -> None:
    s = spec()
    plan = make_plan(manifest(s), state({"m1": failed(s, "conflict")}))
    (change,) = plan.changes
    assert (change.action, change.force_load, change.submits) == ("conflict", None, False)
    assert plan.to_submit == ()
    assert plan.has_changes  # a decision is waiting: --detailed-exitcode says 2
    assert plan.summary["conflict"] == 1


def test_plan_conflict_with_force_load_no_written_stays_a_conflict() -> None:
    s = spec(force_load="no")
    plan = make_plan(manifest(s), state({"m1": failed(s, "conflict")}))
    assert [c.action for c in plan.changes] == ["conflict"]


def test_plan_conflict_is_replaced_only_when_the_manifest_says_force_load_yes() -> None:
    s = spec(force_load="yes")
    plan = make_plan(manifest(s), state({"m1": failed(s, "conflict")}))
    assert [(c.action, c.force_load) for c in plan.changes] == [("retry", "yes")]


def test_plan_an_explicit_force_load_wins_over_the_cause() -> None:
    s = spec(force_load="no")
    plan = make_plan(manifest(s), state({"m1": failed(s, "maybe_reached")}))
    assert [(c.action, c.force_load) for c in plan.changes] == [("retry", "no")]
