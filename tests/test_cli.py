"""The command line, through ``main(args)``: plan, state commands, exit codes, hygiene.

Every test works in its own tmp_path: the example manifest is copied to
``tmp_path/manifests/example.yaml`` and the tests run from tmp_path, so the default
state path (``manifests/.modelsync/example.state.json``) lands there.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest

from modelsync import __version__, output
from modelsync.cli import cli, main
from modelsync.manifest import load_manifest
from modelsync.records import ModelRecord, fingerprint
from modelsync.store.file import StateStore
from tests.helpers import Cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "example.yaml"
PLAN_SCHEMA = REPO / "schemas" / "plan.schema.json"
ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
MANIFEST = "manifests/example.yaml"
STATE = Path("manifests/.modelsync/example.state.json")
IDS = [
    "majicmix-realistic",
    "sdxl-inpainting",
    "sdxl-lightning-4step-lora",
    "sdxl-refiner-v1.0",
    "flux-realism",
]
KEY = "test-api-key-5d1e"
SUMMARY_5_CREATES = "Plan: 5 to create, 0 to update, 0 to retry, 0 unchanged, 0 orphaned."


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with manifests/example.yaml, as the current folder."""
    (tmp_path / "manifests").mkdir()
    shutil.copy(EXAMPLE, tmp_path / MANIFEST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def api(requests_mock: Any) -> Any:
    """The load_model endpoint, answering success; count its calls."""
    return requests_mock.post(ENDPOINT, json={"status": "success", "message": "model load started"})


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)
    return KEY


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(cli: Cli) -> Run:
    """Run ``modelsync ARGS`` in-process: (exit code, stdout, stderr)."""
    return cli


def specs() -> dict[str, Any]:
    manifest = load_manifest(MANIFEST, {})
    return {spec.model_id: spec for spec in manifest.models}


def submitted(spec: Any, status: str = "submitted", **request_changes: str) -> ModelRecord:
    request = spec.request("no")
    request.update(request_changes)
    return ModelRecord(
        fingerprint=fingerprint(request),
        request=request,
        status=status,  # type: ignore[arg-type]
        attempts=1,
        submitted_at="2026-11-25T10:00:00Z" if status == "submitted" else None,
        last_attempt_at="2026-11-25T10:00:00Z",
        response={"status": "success", "message": "model load started"},
        last_error="HTTP 503: Service Unavailable" if status == "failed" else None,
    )


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root (and root): type, mode, size, mtime, contents."""
    entries: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        entries[str(path.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            content,
        )
    return entries


def write_journal(lineage: str, base_serial: int, ops: list[dict[str, Any]]) -> Path:
    """A journal as a killed run leaves it (DESIGN §2, modelsync/state.py)."""
    journal = STATE.with_name(STATE.name + ".journal")
    header = {"op": "begin", "format_version": 1, "lineage": lineage, "base_serial": base_serial}
    journal.write_text("".join(json.dumps(x) + "\n" for x in [header, *ops]), encoding="utf-8")
    return journal


def sibling(suffix: str) -> Path:
    return STATE.with_name(STATE.name + suffix)


# --------------------------------------------------------------------------- plan


def test_plan_without_state_shows_five_creates(project: Path, run: Run) -> None:
    code, out, err = run("plan", MANIFEST)
    assert code == 0
    assert out == (
        "  + majicmix-realistic         create (force_load: no)\n"
        "  + sdxl-inpainting            create (force_load: no)\n"
        "  + sdxl-lightning-4step-lora  create (force_load: no)\n"
        "  + sdxl-refiner-v1.0          create (force_load: no)\n"
        "  + flux-realism               create (force_load: no)\n"
        f"{SUMMARY_5_CREATES}\n"
    )
    assert err == ""


def _plan_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(PLAN_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_plan_schema_shipped_in_the_package_is_the_repos() -> None:
    shipped = REPO / "modelsync" / "schemas" / "plan.schema.json"
    assert shipped.read_bytes() == PLAN_SCHEMA.read_bytes()


def test_plan_json_without_state_has_the_design_shape(project: Path, run: Run) -> None:
    code, out, err = run("plan", MANIFEST, "--output", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    jsonschema.validate(document, _plan_schema(), cls=jsonschema.Draft202012Validator)
    assert document == {
        "format_version": 1,
        "manifest": MANIFEST,
        "state": str(STATE),
        "summary": {
            "create": 5,
            "update": 0,
            "retry": 0,
            "conflict": 0,
            "unchanged": 0,
            "orphan": 0,
        },
        "changes": [
            {"model_id": model_id, "action": "create", "force_load": "no", "fields": {}}
            for model_id in IDS
        ],
    }


def _mixed_state() -> None:
    """State with an update, a failed, a pending, an unchanged model and an orphan."""
    s = specs()
    orphan = submitted(s["flux-realism"], model_id="retired-model", url="org/retired")
    with StateStore(STATE, ENDPOINT) as store:
        store.record("majicmix-realistic", submitted(s["majicmix-realistic"]))
        store.record("sdxl-inpainting", submitted(s["sdxl-inpainting"], revision="fp32"))
        store.record(
            "sdxl-lightning-4step-lora", submitted(s["sdxl-lightning-4step-lora"], "failed")
        )
        store.record("sdxl-refiner-v1.0", submitted(s["sdxl-refiner-v1.0"], "pending"))
        store.record("retired-model", orphan)


def test_plan_text_with_every_action(project: Path, run: Run) -> None:
    _mixed_state()
    code, out, err = run("plan", MANIFEST)
    assert (code, err) == (0, "")
    assert out == (
        "  ~ sdxl-inpainting            update (force_load: yes)\n"
        '      revision: "fp32" → "fp16"\n'
        "  ↻ sdxl-lightning-4step-lora  retry (force_load: yes): HTTP 503: Service Unavailable\n"
        "  ↻ sdxl-refiner-v1.0          retry (force_load: yes): last run left it pending\n"
        "  + flux-realism               create (force_load: no)\n"
        "  - retired-model              orphan: in the state, not in the manifest;"
        " nothing is deleted remotely\n"
        "Plan: 1 to create, 1 to update, 2 to retry, 1 unchanged, 1 orphaned.\n"
    )
    code, verbose, _ = run("-v", "plan", MANIFEST)
    assert code == 0
    assert "  = majicmix-realistic         unchanged\n" in verbose


def test_plan_json_with_every_action(project: Path, run: Run) -> None:
    _mixed_state()
    code, out, err = run("plan", MANIFEST, "-o", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    jsonschema.validate(document, _plan_schema(), cls=jsonschema.Draft202012Validator)
    assert document["summary"] == {
        "create": 1,
        "update": 1,
        "retry": 2,
        "conflict": 0,
        "unchanged": 1,
        "orphan": 1,
    }
    assert document["changes"] == [
        {
            "model_id": "sdxl-inpainting",
            "action": "update",
            "force_load": "yes",
            "fields": {"revision": {"before": "fp32", "after": "fp16"}},
        },
        {
            "model_id": "sdxl-lightning-4step-lora",
            "action": "retry",
            "force_load": "yes",
            "fields": {},
        },
        {"model_id": "sdxl-refiner-v1.0", "action": "retry", "force_load": "yes", "fields": {}},
        {"model_id": "flux-realism", "action": "create", "force_load": "no", "fields": {}},
        {"model_id": "retired-model", "action": "orphan", "force_load": None, "fields": {}},
    ]


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (
            ["--only", "sdxl-*"],
            ["sdxl-inpainting", "sdxl-lightning-4step-lora", "sdxl-refiner-v1.0"],
        ),
        (["--only", "flux-r*", "--only", "majic*"], ["majicmix-realistic", "flux-realism"]),
        (["--exclude", "sdxl-*", "--exclude", "flux-r*"], ["majicmix-realistic"]),
        (["--selector", "team=editing"], ["sdxl-inpainting", "sdxl-lightning-4step-lora"]),
        (["-l", "team!=portraits"], ["sdxl-inpainting", "sdxl-lightning-4step-lora"]),
        (
            ["--selector", "team=portraits,team!=editing", "--exclude", "sdxl-*"],
            ["majicmix-realistic", "flux-realism"],
        ),
    ],
)
def test_plan_subset_options(project: Path, run: Run, args: list[str], shown: list[str]) -> None:
    with StateStore(STATE, ENDPOINT) as store:
        store.record("retired-model", submitted(specs()["flux-realism"], model_id="retired-model"))
    code, out, err = run("plan", MANIFEST, *args, "-o", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert [c["model_id"] for c in document["changes"]] == shown
    # With a subset selected, orphans are not reported.
    assert document["summary"] == {
        "create": len(shown),
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 0,
        "orphan": 0,
    }


def test_plan_warns_about_a_pattern_that_matches_nothing(project: Path, run: Run) -> None:
    code, out, err = run("plan", MANIFEST, "--only", "sdxl-inpainitng")
    assert code == 0
    assert err == "warning: --only/--exclude pattern 'sdxl-inpainitng' matches no model id\n"
    assert out.endswith("Plan: 0 to create, 0 to update, 0 to retry, 0 unchanged, 0 orphaned.\n")


@pytest.mark.parametrize("selector", ["team", "team==editing", "=editing", "team=a,"])
def test_plan_bad_selector_is_a_usage_error(project: Path, run: Run, selector: str) -> None:
    code, out, err = run("plan", MANIFEST, "--selector", selector, "--detailed-exitcode")
    assert code == 64
    assert out == ""
    assert err.startswith("Error: --selector ")
    assert err.endswith(
        " is not 'key=value' or 'key!=value' (labels are set under 'labels:' in the manifest)\n"
    )


def test_detailed_exitcode_is_2_with_changes(project: Path, run: Run) -> None:
    code, out, _ = run("plan", MANIFEST, "--detailed-exitcode")
    assert code == 2
    assert out.endswith(SUMMARY_5_CREATES + "\n")


def test_detailed_exitcode_is_0_after_adopting_all(project: Path, run: Run, api: Any) -> None:
    assert run("state", "adopt", *IDS, MANIFEST)[0] == 0
    code, out, err = run("plan", MANIFEST, "--detailed-exitcode")
    assert (code, err) == (0, "")
    assert out == (
        "No changes: the account holds what the manifest declares.\n"
        "Plan: 0 to create, 0 to update, 0 to retry, 5 unchanged, 0 orphaned.\n"
    )
    assert api.call_count == 0


def test_detailed_exitcode_is_0_after_applying_all(
    project: Path, run: Run, api: Any, key: str
) -> None:
    code, out, _ = run("apply", MANIFEST)
    assert code == 0
    assert "Apply: 5 submitted, 0 failed, 0 skipped, 0 unchanged." in out
    assert api.call_count == 5
    code, out, _ = run("plan", MANIFEST, "--detailed-exitcode", "-o", "json")
    assert code == 0
    assert json.loads(out)["summary"]["unchanged"] == 5
    assert api.call_count == 5


def test_detailed_exitcode_is_0_with_only_orphans(project: Path, run: Run) -> None:
    assert run("state", "adopt", *IDS, MANIFEST)[0] == 0
    with StateStore(STATE, ENDPOINT) as store:
        store.record("retired-model", submitted(specs()["flux-realism"], model_id="retired-model"))
    code, out, _ = run("plan", MANIFEST, "--detailed-exitcode")
    assert code == 0  # orphans are reported, but apply has nothing to send
    assert out.endswith("Plan: 0 to create, 0 to update, 0 to retry, 5 unchanged, 1 orphaned.\n")


def test_detailed_exitcode_keeps_the_manifest_error_code(project: Path, run: Run) -> None:
    text = (project / MANIFEST).read_text(encoding="utf-8")
    (project / MANIFEST).write_text(
        text.replace("model_format: diffusers", "model_format: diffuser"), encoding="utf-8"
    )
    code, out, err = run("plan", MANIFEST, "--detailed-exitcode")
    assert code == 3
    assert out == ""
    assert "model_format: 'diffuser' is not one of" in err
    assert "(did you mean 'diffusers'?)" in err


def test_detailed_exitcode_keeps_the_state_error_code(project: Path, run: Run) -> None:
    STATE.parent.mkdir()
    STATE.write_bytes(b"")
    code, out, err = run("plan", MANIFEST, "--detailed-exitcode")
    assert (code, out) == (4, "")
    assert err.startswith(f"Error: state {STATE} is empty;")


@pytest.mark.parametrize(
    "args",
    [
        ["plan", MANIFEST, "--detailed-exitcode", "--no-such-option"],
        ["plan", MANIFEST, "--detailed-exitcode", "--output", "xml"],
        ["plan", "--detailed-exitcode"],
        ["--color", "sometimes", "plan", MANIFEST, "--detailed-exitcode"],
        ["plan", MANIFEST, "extra-argument", "--detailed-exitcode"],
        ["no-such-command"],
    ],
)
def test_usage_error_is_64_never_2(project: Path, run: Run, args: list[str]) -> None:
    code, out, err = run(*args)
    assert code == 64
    assert out == ""
    assert "Error: " in err
    assert "Traceback" not in err


def test_apply_dry_run_prints_the_plan(project: Path, run: Run, api: Any) -> None:
    _, plan_out, _ = run("plan", MANIFEST, "--exclude", "flux-r*")
    code, out, _ = run("apply", MANIFEST, "--dry-run", "--exclude", "flux-r*")
    assert code == 0
    assert out == plan_out
    assert api.call_count == 0


# --------------------------------------------------------------------------- plan writes nothing


def test_plan_writes_nothing_without_state(project: Path, run: Run) -> None:
    before = snapshot(project)
    for args in (["plan", MANIFEST], ["plan", MANIFEST, "-o", "json", "--detailed-exitcode"]):
        assert run(*args)[0] in (0, 2)
    assert snapshot(project) == before
    assert not (project / "manifests" / ".modelsync").exists()


def test_plan_writes_nothing_with_a_state_and_backup(project: Path, run: Run) -> None:
    _mixed_state()
    assert run("state", "adopt", "flux-realism", MANIFEST)[0] == 0
    assert sibling(".backup").exists()
    before = snapshot(project)
    time.sleep(0.01)  # a rewrite would show in the mtimes
    assert run("plan", MANIFEST)[0] == 0
    assert run("plan", MANIFEST, "-o", "json", "--detailed-exitcode")[0] == 2
    assert run("apply", MANIFEST, "--dry-run")[0] == 0
    assert snapshot(project) == before


def test_plan_folds_a_leftover_journal_and_writes_nothing(project: Path, run: Run) -> None:
    s = specs()
    with StateStore(STATE, ENDPOINT) as store:
        store.record("majicmix-realistic", submitted(s["majicmix-realistic"]))
    doc = json.loads(STATE.read_text(encoding="utf-8"))
    write_journal(
        doc["lineage"],
        doc["serial"],
        [
            {
                "op": "put",
                "model_id": "flux-realism",
                "record": submitted(s["flux-realism"]).to_json(),
            },
            {"op": "del", "model_id": "majicmix-realistic"},
        ],
    )
    before = snapshot(project)
    time.sleep(0.01)
    code, out, err = run("plan", MANIFEST, "-o", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["summary"] == {
        "create": 4,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 1,
        "orphan": 0,
    }
    assert "flux-realism" not in [c["model_id"] for c in document["changes"]]
    assert snapshot(project) == before


# --------------------------------------------------------------------------- secrets

_SECRET_MANIFEST = """\
version: 1
models:
  - model_id: majicmix-realistic
    url: https://civitai.com/api/download/models/{version}?type=Model&token=${{CIVITAI_TOKEN}}
    model_format: safetensors
    model_category: stable_diffusion
"""
CANARY = "canary-7f3a9c1e-do-not-print"


def test_plan_update_shows_the_secret_template_never_its_value(
    project: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", CANARY)
    secret = project / "manifests" / "secret.yaml"
    secret.write_text(_SECRET_MANIFEST.format(version=111111), encoding="utf-8")
    assert run("state", "adopt", "majicmix-realistic", "manifests/secret.yaml")[0] == 0
    secret.write_text(_SECRET_MANIFEST.format(version=132760), encoding="utf-8")

    code, out, err = run("plan", "manifests/secret.yaml")
    assert (code, err) == (0, "")
    old = "https://civitai.com/api/download/models/111111?type=Model&token=${CIVITAI_TOKEN}"
    new = "https://civitai.com/api/download/models/132760?type=Model&token=${CIVITAI_TOKEN}"
    assert out == (
        "  ~ majicmix-realistic  update (force_load: yes)\n"
        f'      url: "{old}" → "{new}"\n'
        "Plan: 0 to create, 1 to update, 0 to retry, 0 unchanged, 0 orphaned.\n"
    )
    code, out_json, err_json = run("-v", "plan", "manifests/secret.yaml", "-o", "json")
    assert code == 0
    assert json.loads(out_json)["changes"][0]["fields"] == {"url": {"before": old, "after": new}}
    state_text = Path("manifests/.modelsync/secret.state.json").read_text(encoding="utf-8")
    for text in (out, err, out_json, err_json, state_text):
        assert CANARY not in text


# --------------------------------------------------------------------------- untrusted state


def _adopted_state(run: Run) -> dict[str, Any]:
    assert run("state", "adopt", "majicmix-realistic", MANIFEST)[0] == 0
    data: dict[str, Any] = json.loads(STATE.read_text(encoding="utf-8"))
    return data


def _with_backup(run: Run) -> None:
    _adopted_state(run)
    assert run("state", "adopt", "flux-realism", MANIFEST)[0] == 0
    assert sibling(".backup").exists()


def _empty(run: Run) -> None:
    _adopted_state(run)
    STATE.write_bytes(b"")


def _truncated(run: Run) -> None:
    _adopted_state(run)
    data = STATE.read_bytes()
    STATE.write_bytes(data[: len(data) // 2])


def _not_json(run: Run) -> None:
    _adopted_state(run)
    STATE.write_text("<html>502 Bad Gateway</html>\n", encoding="utf-8")


def _future_version(run: Run) -> None:
    doc = _adopted_state(run)
    doc["format_version"] = 2
    STATE.write_text(json.dumps(doc), encoding="utf-8")


def _other_endpoint(run: Run) -> None:
    doc = _adopted_state(run)
    doc["endpoint"] = "https://other.example/api/v3/load_model"
    STATE.write_text(json.dumps(doc), encoding="utf-8")


def _swapped_lineage(run: Run) -> None:
    _with_backup(run)
    doc = json.loads(STATE.read_text(encoding="utf-8"))
    doc["lineage"] = "00000000-0000-4000-8000-000000000000"
    STATE.write_text(json.dumps(doc), encoding="utf-8")


def _missing_with_backup(run: Run) -> None:
    _with_backup(run)
    STATE.unlink()


def _missing_with_journal(run: Run) -> None:
    doc = _adopted_state(run)
    write_journal(doc["lineage"], doc["serial"], [])
    STATE.unlink()


UNTRUSTED: dict[str, tuple[Callable[[Run], None], str]] = {
    "empty": (_empty, f"state {STATE} is empty;"),
    "truncated": (_truncated, f"state {STATE} is not valid JSON (line "),
    "not-json": (_not_json, f"state {STATE} is not valid JSON (line 1 column 1"),
    "future-format": (
        _future_version,
        f"state {STATE} has format_version 2, but this modelsync reads format_version 1;"
        " upgrade modelsync to read it;",
    ),
    "other-endpoint": (
        _other_endpoint,
        f"state {STATE} was written for endpoint https://other.example/api/v3/load_model,"
        f" but this run targets {ENDPOINT}; pass --endpoint",
    ),
    "lineage-differs-from-backup": (
        _swapped_lineage,
        f"state {STATE} has lineage 00000000-0000-4000-8000-000000000000, but its backup",
    ),
    "missing-with-backup": (_missing_with_backup, f"state {STATE} is missing but its backup"),
    "missing-with-journal": (_missing_with_journal, f"state {STATE} is missing but its journal"),
}
RECOVERY_HINTS = {
    "empty": "restore ",
    "truncated": "restore ",
    "not-json": "restore ",
    "future-format": "restore ",
    "other-endpoint": "--endpoint",
    "lineage-differs-from-backup": "restore it with `cp ",
    "missing-with-backup": "restore it with `cp ",
    "missing-with-journal": "restore the state file",
}


def _state_files() -> dict[str, bytes]:
    folder = STATE.parent
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if not p.name.endswith((".lock", ".lock.info"))
    }


@pytest.mark.parametrize("case", sorted(UNTRUSTED))
@pytest.mark.parametrize(
    "command",
    [
        ["plan", MANIFEST],
        ["plan", MANIFEST, "--detailed-exitcode", "-o", "json"],
        ["apply", MANIFEST],
        ["state", "list", MANIFEST],
        ["state", "adopt", "sdxl-inpainting", MANIFEST],
    ],
    ids=["plan", "plan-json", "apply", "state-list", "state-adopt"],
)
def test_untrusted_state_stops_with_4_and_sends_nothing(
    project: Path, run: Run, api: Any, key: str, case: str, command: list[str]
) -> None:
    setup, expected = UNTRUSTED[case]
    setup(run)
    files = _state_files()
    assert api.call_count == 0  # adopt sent nothing either
    code, out, err = run(*command)
    assert code == 4
    assert out == ""
    assert err.startswith("Error: " + expected), err
    assert err.count("\n") == 1  # one message, no traceback
    assert RECOVERY_HINTS[case] in err
    assert "pass --state to " in err
    assert api.call_count == 0
    assert _state_files() == files  # nothing rewritten, nothing "repaired"


# --------------------------------------------------------------------------- lock


def _user_at_host() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def test_apply_while_locked_in_process_exits_4_at_once_naming_the_holder(
    project: Path, run: Run, api: Any, key: str
) -> None:
    with StateStore(STATE, ENDPOINT, command="modelsync apply manifests/example.yaml -q"):
        started = time.monotonic()
        code, out, err = run("apply", MANIFEST)
        elapsed = time.monotonic() - started
    assert code == 4
    assert elapsed < 1
    assert out == ""
    assert err.startswith(
        f"Error: state {STATE} is locked by pid {os.getpid()} ({_user_at_host()},"
        ' "modelsync apply manifests/example.yaml -q") since 20'
    )
    assert err.endswith("; wait for it, or pass --lock-timeout SECONDS\n")
    assert api.call_count == 0


_HOLDER = """\
import sys
from modelsync.store.file import StateStore
with StateStore(sys.argv[1], sys.argv[2], command="modelsync apply prod.yaml --parallelism 2"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(project: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the state lock until its stdin gets a line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(project / STATE), ENDPOINT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=project,
    )
    try:
        assert proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=20)
        assert line == ["locked\n"], "the holder process did not take the lock"
        yield proc
    finally:
        if proc.stdin is not None:
            try:
                proc.stdin.write("\n")
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    "command",
    [
        ["apply", MANIFEST],
        ["state", "adopt", "flux-realism", MANIFEST],
        ["state", "rm", "flux-realism", MANIFEST],
    ],
    ids=["apply", "state-adopt", "state-rm"],
)
def test_writer_while_another_process_holds_the_lock_exits_4(
    holder: subprocess.Popen[str], run: Run, api: Any, key: str, command: list[str]
) -> None:
    started = time.monotonic()
    code, out, err = run(*command)
    assert time.monotonic() - started < 1
    assert (code, out) == (4, "")
    assert err.startswith(
        f"Error: state {STATE} is locked by pid {holder.pid} ({_user_at_host()},"
        ' "modelsync apply prod.yaml --parallelism 2") since 20'
    )
    assert api.call_count == 0


def test_plan_does_not_need_the_lock(holder: subprocess.Popen[str], run: Run) -> None:
    code, out, _ = run("plan", MANIFEST)
    assert code == 0
    assert out.endswith(SUMMARY_5_CREATES + "\n")


def test_lock_timeout_waits_then_fails(project: Path, run: Run, api: Any, key: str) -> None:
    with StateStore(STATE, ENDPOINT, command="modelsync apply other"):
        started = time.monotonic()
        code, _, err = run("apply", MANIFEST, "--lock-timeout", "0.4")
        elapsed = time.monotonic() - started
    assert code == 4
    assert 0.4 <= elapsed < 5
    assert "(waited 0.4 s); wait for it, or pass --lock-timeout SECONDS" in err
    assert api.call_count == 0


def test_lock_timeout_waits_for_the_holder_to_finish(
    project: Path, run: Run, api: Any, key: str
) -> None:
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with StateStore(STATE, ENDPOINT, command="modelsync apply other"):
            locked.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(timeout=10)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        started = time.monotonic()
        code, out, err = run("apply", MANIFEST, "--lock-timeout", "10")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        thread.join(timeout=10)
    assert code == 0, err
    assert 0.25 <= elapsed < 10
    assert "Apply: 5 submitted, 0 failed, 0 skipped, 0 unchanged." in out
    assert api.call_count == 5


# --------------------------------------------------------------------------- state commands


def test_state_list_without_state(project: Path, run: Run) -> None:
    before = snapshot(project)
    code, out, err = run("state", "list", MANIFEST)
    assert (code, err) == (0, "")
    assert out == f"No state yet at {STATE}: the first apply creates it.\n"
    code, out, _ = run("state", "list", MANIFEST, "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["models"] == {}
    assert document["lineage"] is None
    assert document["endpoint"] == ENDPOINT
    assert snapshot(project) == before


def test_state_adopt_records_without_a_request(project: Path, run: Run, api: Any, key: str) -> None:
    code, out, err = run("state", "adopt", "sdxl-inpainting", "flux-realism", MANIFEST)
    assert (code, err) == (0, "")
    assert out == "Adopted into the state: sdxl-inpainting, flux-realism\n"
    assert api.call_count == 0

    code, out, _ = run("state", "show", "sdxl-inpainting", MANIFEST)
    assert code == 0
    record = json.loads(out)["sdxl-inpainting"]
    assert record["status"] == "submitted"
    assert record["attempts"] == 0
    assert record["request"] == specs()["sdxl-inpainting"].request("no")
    assert record["response"] == {
        "status": "adopted",
        "message": "recorded by modelsync state adopt",
    }

    code, out, _ = run("plan", MANIFEST, "-o", "json")
    document = json.loads(out)
    assert document["summary"] == {
        "create": 3,
        "update": 0,
        "retry": 0,
        "conflict": 0,
        "unchanged": 2,
        "orphan": 0,
    }
    assert [c["model_id"] for c in document["changes"]] == [
        "majicmix-realistic",
        "sdxl-lightning-4step-lora",
        "sdxl-refiner-v1.0",
    ]
    assert os.stat(STATE).st_mode & 0o777 == 0o600


def test_state_adopt_of_an_id_not_in_the_manifest_is_a_usage_error(
    project: Path, run: Run, api: Any
) -> None:
    before = snapshot(project)
    code, out, err = run("state", "adopt", "flux-realism", "hand-loaded", MANIFEST)
    assert (code, out) == (64, "")
    assert err == (
        f"Error: 'hand-loaded' is not in {MANIFEST}: add it to the manifest first, "
        "as it exists on the account\n"
    )
    assert snapshot(project) == before  # not even the valid id was adopted
    assert api.call_count == 0


def test_state_rm_drops_the_record_and_plan_creates_it_again(
    project: Path, run: Run, api: Any
) -> None:
    assert run("state", "adopt", *IDS, MANIFEST)[0] == 0
    code, out, err = run("state", "rm", "sdxl-inpainting", MANIFEST)
    assert (code, err) == (0, "")
    assert out == "Removed from the state: sdxl-inpainting\n"
    assert "sdxl-inpainting" not in json.loads(STATE.read_text(encoding="utf-8"))["models"]
    code, out, _ = run("plan", MANIFEST, "--detailed-exitcode")
    assert code == 2
    assert out == (
        "  + sdxl-inpainting  create (force_load: no)\n"
        "Plan: 1 to create, 0 to update, 0 to retry, 4 unchanged, 0 orphaned.\n"
    )
    assert api.call_count == 0


def test_state_rm_of_an_id_not_in_the_state_is_a_usage_error(project: Path, run: Run) -> None:
    assert run("state", "adopt", "flux-realism", MANIFEST)[0] == 0
    before = STATE.read_bytes()
    code, out, err = run("state", "rm", "flux-realism", "nope", MANIFEST)
    assert (code, out) == (64, "")
    assert err == f"Error: not in the state {STATE}: nope (see 'modelsync state list')\n"
    assert STATE.read_bytes() == before


def test_state_show_prints_the_record_json(project: Path, run: Run) -> None:
    record = submitted(specs()["flux-realism"], "failed")
    with StateStore(STATE, ENDPOINT) as store:
        store.record("flux-realism", record)
    code, out, err = run("state", "show", "flux-realism", MANIFEST)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"flux-realism": record.to_json()}


def test_state_show_of_an_unknown_id_is_a_usage_error(project: Path, run: Run) -> None:
    code, out, err = run("state", "show", "nope", MANIFEST)
    assert (code, out) == (64, "")
    assert err == f"Error: 'nope' is not in the state {STATE}\n"


def test_state_list_shows_each_model(project: Path, run: Run) -> None:
    _mixed_state()
    code, out, _ = run("state", "list", MANIFEST)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"State {STATE} (serial 1, endpoint {ENDPOINT}):")
    assert lines[-1] == "5 models."
    assert [line.split()[0] for line in lines[1:-1]] == sorted(
        [
            "majicmix-realistic",
            "sdxl-inpainting",
            "sdxl-lightning-4step-lora",
            "sdxl-refiner-v1.0",
            "retired-model",
        ]
    )
    assert "  sdxl-lightning-4step-lora  failed     2026-11-25T10:00:00Z  HTTP 503" in out


# --------------------------------------------------------------------------- hygiene


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(cli))


def test_the_commands_are_those_of_the_design() -> None:
    assert sorted(" ".join(c) for c in COMMANDS) == [
        "apply",
        "plan",
        "sandbox",
        "schema",
        "state",
        "state adopt",
        "state ddl",
        "state list",
        "state migrate",
        "state rm",
        "state show",
        "state unlock",
        "validate",
    ]


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "modelsync")
def test_every_command_has_help_and_an_example(run: Run, path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and command.help.strip()
    assert command.get_short_help_str(limit=80).strip()
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts} has no help"
    code, out, err = run(*path, "--help")
    assert (code, err) == (0, "")
    assert out.startswith(" ".join(("Usage: modelsync", *path)) + " ")
    assert "Example" in out
    assert f"modelsync {' '.join(path)}".rstrip() in out.split("Example", 1)[1]


def test_version(run: Run) -> None:
    assert run("--version") == (0, f"modelsync {__version__}\n", "")


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError(f"boom with {CANARY}")


def test_unexpected_exception_is_70_with_one_line(
    project: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsync import redact
    from modelsync.commands import plan as workflow

    redact.register_secret(CANARY)
    monkeypatch.setattr(workflow, "make_plan", _boom)
    code, out, err = run("plan", MANIFEST)
    assert (code, out) == (70, "")
    assert err == (
        "Error: internal error (RuntimeError: boom with ***). This is a bug in modelsync "
        f"{__version__}: please report it with the output of the same command run with -v.\n"
    )


def test_unexpected_exception_shows_the_traceback_with_v(
    project: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsync import redact
    from modelsync.commands import plan as workflow

    redact.register_secret(CANARY)
    monkeypatch.setattr(workflow, "make_plan", _boom)
    code, out, err = run("-v", "plan", MANIFEST)
    assert (code, out) == (70, "")
    assert err.startswith("Traceback (most recent call last):\n")
    assert "RuntimeError: boom with ***\n" in err
    assert err.endswith("please report it with the output of the same command run with -v.\n")
    assert CANARY not in err


@pytest.mark.parametrize("args", [[], ["-v"]], ids=["plain", "verbose"])
def test_user_errors_never_print_a_traceback(project: Path, run: Run, args: list[str]) -> None:
    STATE.parent.mkdir()
    STATE.write_text("{", encoding="utf-8")
    code, _, err = run(*args, "plan", MANIFEST)
    assert code == 4
    assert "Traceback" not in err


class _Tty:
    def isatty(self) -> bool:
        return True


class _Pipe:
    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("choice", "no_color", "stream", "expected"),
    [
        ("auto", None, _Tty(), True),
        ("auto", None, _Pipe(), False),
        ("always", None, _Pipe(), True),
        ("never", None, _Tty(), False),
        ("auto", "1", _Tty(), False),
        ("always", "1", _Tty(), False),  # documented: NO_COLOR means never
        ("auto", "", _Tty(), True),  # NO_COLOR set but empty does not count
    ],
)
def test_color_enabled(
    monkeypatch: pytest.MonkeyPatch, choice: str, no_color: str | None, stream: Any, expected: bool
) -> None:
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert output.color_enabled(choice, stream) is expected


ESC = "\x1b["


def test_color_always_colours_the_plan_even_when_piped(project: Path, run: Run) -> None:
    code, out, _ = run("--color", "always", "plan", MANIFEST)
    assert code == 0
    assert f"{ESC}32m  + majicmix-realistic         create (force_load: no){ESC}0m\n" in out


def test_color_always_colours_the_apply_summary_even_when_piped(
    project: Path, run: Run, api: Any, key: str
) -> None:
    code, out, _ = run("--color", "always", "apply", MANIFEST)
    assert code == 0
    assert f"{ESC}32m  + flux-realism " in out
    assert "Apply: 5 submitted, 0 failed, 0 skipped, 0 unchanged." in out
    assert f"{ESC}32m{ESC}1mApply: 5 submitted" in out


def test_color_auto_on_a_terminal_colours_the_plan(
    project: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    code, out, _ = run("plan", MANIFEST)
    assert code == 0
    assert ESC in out


@pytest.mark.parametrize(
    ("args", "no_color"),
    [
        (["--color", "never"], None),
        (["--color", "never"], "1"),
        ([], "1"),
        (["--color", "auto"], "1"),
        (["--color", "always"], "1"),
    ],
)
def test_no_escape_sequences_with_color_never_or_no_color(
    project: Path,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    no_color: str | None,
) -> None:
    # A terminal on both streams: colour would be used if allowed.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    _mixed_state()
    code, out, err = run(*args, "plan", MANIFEST, "--only", "nothing-matches-this", "--only", "*")
    assert code == 0
    assert "warning: --only/--exclude pattern" in err
    assert "update (force_load: yes)" in out
    assert ESC not in out
    assert ESC not in err


_INVALID = """\
version: 1
models:
  - model_id: one
    url: https://example.com/one.safetensors
    model_format: safetensor
    model_category: vae
"""


def test_validate_reports_each_file(project: Path, run: Run) -> None:
    shutil.copy(MANIFEST, "manifests/copy.yaml")
    Path("manifests/bad.yaml").write_text(_INVALID, encoding="utf-8")
    code, out, err = run(
        "validate", MANIFEST, "manifests/bad.yaml", "manifests/missing.yaml", "manifests/copy.yaml"
    )
    assert code == 3
    assert out == (f"{MANIFEST}: valid (5 models)\nmanifests/copy.yaml: valid (5 models)\n")
    lines = err.splitlines()
    assert lines == [
        "manifests/bad.yaml:5:5: models[0] (id 'one'): model_format: 'safetensor' is not one"
        " of 'diffusers', 'safetensors', 'ckpt' (did you mean 'safetensors'?)",
        "manifests/bad.yaml: invalid (1 problem)",
        "manifests/missing.yaml: no such file; check the path",
        "manifests/missing.yaml: invalid (1 problem)",
    ]


def test_validate_all_valid_is_0(project: Path, run: Run) -> None:
    shutil.copy(MANIFEST, "manifests/copy.yaml")
    code, out, err = run("validate", MANIFEST, "manifests/copy.yaml")
    assert (code, err) == (0, "")
    assert out == f"{MANIFEST}: valid (5 models)\nmanifests/copy.yaml: valid (5 models)\n"


def test_schema_prints_the_shipped_schema(run: Run) -> None:
    code, out, _ = run("schema")
    assert code == 0
    shipped = (REPO / "modelsync" / "schemas" / "manifest.schema.json").read_text("utf-8")
    assert out == shipped
    jsonschema.Draft202012Validator.check_schema(json.loads(out))


# --------------------------------------------------------------------------- exit codes (§5)


def _invalid_manifest(project: Path) -> None:
    Path("manifests/example.yaml").write_text(_INVALID, encoding="utf-8")


def _bad_state(project: Path) -> None:
    STATE.parent.mkdir()
    STATE.write_text('{"format_version": 1', encoding="utf-8")


def _nothing(project: Path) -> None:
    pass


def _all_adopted(project: Path) -> None:
    assert main(["-q", "state", "adopt", *IDS, MANIFEST]) == 0


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        (_nothing, ["plan", MANIFEST], 0),
        (_nothing, ["validate", MANIFEST], 0),
        (_nothing, ["state", "list", MANIFEST], 0),
        (_all_adopted, ["plan", MANIFEST, "--detailed-exitcode"], 0),
        (_nothing, ["plan", MANIFEST, "--detailed-exitcode"], 2),
        (_invalid_manifest, ["validate", MANIFEST], 3),
        (_invalid_manifest, ["plan", MANIFEST], 3),
        (_invalid_manifest, ["state", "list", MANIFEST], 3),
        (_nothing, ["plan", "manifests/missing.yaml"], 3),
        (_bad_state, ["plan", MANIFEST], 4),
        (_bad_state, ["state", "list", MANIFEST], 4),
        (_bad_state, ["state", "show", "flux-realism", MANIFEST], 4),
        (_bad_state, ["state", "rm", "flux-realism", MANIFEST], 4),
        (_nothing, ["apply", MANIFEST], 5),  # no API key: nothing sent
        (_nothing, ["plan"], 64),
        (_nothing, ["plan", MANIFEST, "--lock-timeout", "1"], 64),
        (_nothing, ["state", "adopt", "nope", MANIFEST], 64),
        (_nothing, ["state", "rm", "nope", MANIFEST], 64),
        (_nothing, ["state", "frobnicate"], 64),
    ],
)
def test_exit_codes(
    project: Path,
    run: Run,
    api: Any,
    setup: Callable[[Path], None],
    args: list[str],
    expected: int,
) -> None:
    setup(project)
    code, _, err = run(*args)
    assert code == expected, err
    assert "Traceback" not in err
    assert api.call_count == 0
