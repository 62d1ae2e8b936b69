"""Hints for the commonest slips (DESIGN §5): each message asserted whole, with its exit code.

A global option after the command, a --selector on a label no model has, a pasted API
request body, an unknown id in ``state show``, a key file others can read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm

from modelsync.records import ModelRecord, fingerprint
from modelsync.store.file import StateStore
from tests.helpers import Cli, write_models_manifest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "example.yaml"
MANIFEST = "manifests/example.yaml"
STATE = Path("manifests/.modelsync/example.state.json")
ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with manifests/example.yaml, as the current folder."""
    (tmp_path / "manifests").mkdir()
    shutil.copy(EXAMPLE, tmp_path / MANIFEST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- global options


def _order(option: str, right: str) -> str:
    return f"Error: {option} is a global option: put it before the command: modelsync {right}\n"


@pytest.mark.parametrize(
    ("args", "option", "right"),
    [
        (["plan", "-v", MANIFEST], "-v", f"-v plan {MANIFEST}"),
        (["plan", "-vv", MANIFEST], "-v", f"-vv plan {MANIFEST}"),
        (["plan", MANIFEST, "-q"], "-q", f"-q plan {MANIFEST}"),
        (["plan", MANIFEST, "--verbose"], "--verbose", f"--verbose plan {MANIFEST}"),
        (["apply", MANIFEST, "--color", "never"], "--color", f"--color never apply {MANIFEST}"),
        (["apply", MANIFEST, "--color=never"], "--color", f"--color=never apply {MANIFEST}"),
        (
            ["plan", MANIFEST, "--log-format", "json"],
            "--log-format",
            f"--log-format json plan {MANIFEST}",
        ),
        (["validate", MANIFEST, "--version"], "--version", "--version"),
        # Every global option after the command moves; the command's own stay, values too.
        (
            ["--color", "never", "plan", "--only", "-v", MANIFEST, "-q", "-l", "team!=x", "-v"],
            "-q",
            f"--color never -q -v plan --only -v {MANIFEST} -l 'team!=x'",
        ),
        (["state", "list", MANIFEST, "-v"], "-v", f"-v state list {MANIFEST}"),
        (["state", "-v", "show", "x", MANIFEST], "-v", f"-v state show x {MANIFEST}"),
        (["plan", "my manifest.yaml", "-v"], "-v", "-v plan 'my manifest.yaml'"),
    ],
)
def test_global_option_after_the_command_shows_the_right_order(
    project: Path, cli: Cli, args: list[str], option: str, right: str
) -> None:
    code, out, err = cli(*args)
    assert (code, out, err) == (64, "", _order(option, right))


def test_global_option_after_the_command_in_json_logs(project: Path, cli: Cli) -> None:
    code, out, err = cli("--log-format", "json", "plan", MANIFEST, "-v")
    assert (code, out) == (64, "")
    record = json.loads(err)
    assert (record["level"], record["message"]) == (
        "error",
        "-v is a global option: put it before the command: "
        f"modelsync --log-format json -v plan {MANIFEST}",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # click's own words, which changed over its versions (8.2: "No such option: -x").
        (["plan", MANIFEST, "-x"], r"No such option(: -x|\s'-x'\.)"),
        (
            ["--colour", "never", "plan", MANIFEST],
            r"No such option(: --colour|\s'--colour'\.) Did you mean '?--color'?\?",
        ),
        (["plan", MANIFEST, "--", "-v"], r"Got unexpected extra argument \(-v\)"),
    ],
)
def test_other_usage_errors_keep_clicks_message(
    project: Path, cli: Cli, args: list[str], message: str
) -> None:
    code, out, err = cli(*args)
    assert (code, out) == (64, "")
    assert re.search(f"\nError: {message}\n$", err), err
    assert "global option" not in err


# --------------------------------------------------------------------------- --selector


@pytest.mark.parametrize(
    ("selector", "shown"),
    [("tema=portraits", "tema=portraits"), ("tier!=prod", "tier!=prod")],
)
def test_selector_on_a_label_no_model_has_warns_with_the_labels(
    project: Path, cli: Cli, selector: str, shown: str
) -> None:
    code, out, err = cli("plan", MANIFEST, "--selector", selector)
    key = shown.split("!=")[0].split("=")[0]
    assert code == 0
    assert err == (
        f"warning: --selector {shown}: no model has the label {key!r}; "
        f"the labels in {MANIFEST} are: team\n"
    )
    assert out.splitlines()[-1].startswith("Plan: ")


def test_selector_warning_per_unknown_key(project: Path, cli: Cli) -> None:
    code, _out, err = cli(
        "plan", MANIFEST, "-l", "team=portraits,tier!=prod", "-l", "env=x", "--detailed-exitcode"
    )
    assert code == 0  # env=x selects nothing: no changes
    assert err.splitlines() == [
        f"warning: --selector tier!=prod: no model has the label 'tier'; "
        f"the labels in {MANIFEST} are: team",
        f"warning: --selector env=x: no model has the label 'env'; "
        f"the labels in {MANIFEST} are: team",
    ]


def test_selector_warning_keeps_the_exit_code(project: Path, cli: Cli) -> None:
    code, _out, err = cli("plan", MANIFEST, "-l", "tier!=prod", "--detailed-exitcode")
    assert code == 2  # every model is still selected: creates
    assert err.startswith("warning: --selector tier!=prod: no model has the label 'tier'")


def test_selector_when_no_model_has_labels(tmp_path: Path, cli: Cli) -> None:
    manifest = tmp_path / "plain.yaml"
    write_models_manifest(manifest, ["model-000"])
    code, _out, err = cli("plan", manifest, "--selector", "team=x", "--state", tmp_path / "s.json")
    assert code == 0
    assert err == (
        f"warning: --selector team=x: no model in {manifest} has labels "
        "(set them under 'labels:')\n"
    )


def test_selector_on_a_known_label_is_quiet(project: Path, cli: Cli) -> None:
    code, _out, err = cli("plan", MANIFEST, "--selector", "team=nobody")
    assert (code, err) == (0, "")


# --------------------------------------------------------------------------- pasted body


def test_pasted_request_body_says_put_it_under_models(tmp_path: Path, cli: Cli) -> None:
    body = tmp_path / "body.yaml"
    body.write_text(
        "# pasted from the API docs\n"
        'key: "pasted-key-7e1d"\n'
        "model_id: majicmix-realistic\n"
        "url: https://civitai.com/api/download/models/132760\n"
        "model_format: safetensors\n"
        "model_category: stable_diffusion\n"
        "webhook: null\n",
        encoding="utf-8",
    )
    code, out, err = cli("validate", body)
    assert (code, out) == (3, "")
    assert err == (
        f"{body}:3:1: this is a load_model request body, not a manifest: put each model "
        "under 'models:', like this (leave out 'key': the API key goes in the environment "
        "variable MODELSYNC_API_KEY or --api-key-file, never in the manifest):\n"
        "  version: 1\n"
        "  models:\n"
        "    - model_id: majicmix-realistic\n"
        "      url: ...\n"
        "      model_format: ...\n"
        "      model_category: ...\n"
        f"{body}: invalid (1 problem)\n"
    )
    assert "pasted-key-7e1d" not in err


def test_pasted_json_body_is_one_error_in_plan_too(tmp_path: Path, cli: Cli) -> None:
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps(
            {
                "model_id": "sdxl-inpainting",
                "url": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                "model_format": "diffusers",
                "model_category": "stable_diffusion_xl",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    code, out, err = cli("plan", body, "--state", tmp_path / "s.json")
    assert (code, out) == (3, "")
    assert err == (
        f"{body}:2:3: this is a load_model request body, not a manifest: put each model "
        "under 'models:', like this:\n"
        "  version: 1\n"
        "  models:\n"
        "    - model_id: sdxl-inpainting\n"
        "      url: ...\n"
        "      model_format: ...\n"
        "      model_category: ...\n"
    )


def test_top_level_url_without_a_usable_id(tmp_path: Path, cli: Cli) -> None:
    body = tmp_path / "body.yaml"
    body.write_text("version: 1\nurl: https://example.com/m.safetensors\n", encoding="utf-8")
    code, _out, err = cli("validate", body)
    assert code == 3
    assert err.splitlines()[:4] == [
        f"{body}:2:1: this is a load_model request body, not a manifest: put each model "
        "under 'models:', like this:",
        "  version: 1",
        "  models:",
        "    - model_id: ...",
    ]


def test_manifest_with_models_keeps_unknown_key_errors(tmp_path: Path, cli: Cli) -> None:
    manifest = tmp_path / "m.yaml"
    ids = write_models_manifest(manifest, ["model-000"])
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(f"model_id: {ids[0]}\n{text}", encoding="utf-8")
    code, _out, err = cli("validate", manifest)
    assert code == 3
    assert "request body" not in err
    assert "unknown key 'model_id'" in err


# --------------------------------------------------------------------------- state show


def _record() -> ModelRecord:
    request = {"model_id": "majicmix-realistic", "url": "https://example.com/m.safetensors"}
    return ModelRecord(
        fingerprint=fingerprint(request),
        request=request,
        status="submitted",
        attempts=1,
        submitted_at="2026-11-25T10:00:00Z",
    )


@pytest.mark.parametrize(
    ("asked", "hint"),
    [
        ("majicmix-realstic", " (did you mean 'majicmix-realistic'?)"),
        ("sdxl-refiner", " (did you mean 'sdxl-refiner-v1.0'?)"),
        ("sdxl-inpaint", " (did you mean 'sdxl-inpainting'?)"),
        ("nothing-like-it", ""),
    ],
)
def test_state_show_of_an_unknown_id_suggests_near_ids(
    project: Path, cli: Cli, asked: str, hint: str
) -> None:
    with StateStore(STATE, ENDPOINT) as store:
        for model_id in ("majicmix-realistic", "sdxl-inpainting", "sdxl-refiner-v1.0"):
            store.record(model_id, _record())
    code, out, err = cli("state", "show", asked, MANIFEST)
    assert (code, out) == (64, "")
    assert err == f"Error: {asked!r} is not in the state {STATE}{hint}\n"


def test_state_show_suggests_several_near_ids(project: Path, cli: Cli) -> None:
    with StateStore(STATE, ENDPOINT) as store:
        for model_id in ("sdxl-base-a", "sdxl-base-b"):
            store.record(model_id, _record())
    code, _out, err = cli("state", "show", "sdxl-base", MANIFEST)
    assert code == 64
    assert err == (
        f"Error: 'sdxl-base' is not in the state {STATE} "
        "(did you mean 'sdxl-base-a' or 'sdxl-base-b'?)\n"
    )


# --------------------------------------------------------------------------- key file

KEY = "file-key-0c5e2b"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize(
    ("mode", "who"), [(0o644, "others"), (0o604, "others"), (0o640, "its group")]
)
def test_key_file_readable_by_others_warns_and_the_run_goes_on(
    tmp_path: Path, cli: Cli, requests_mock: rm.Mocker, mode: int, who: str
) -> None:
    manifest = tmp_path / "m.yaml"
    write_models_manifest(manifest, ["model-000"])
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(mode)
    requests_mock.post(ENDPOINT, json={"status": "success", "message": "started"})
    code, _out, err = cli("apply", manifest, "--api-key-file", key_file)
    assert code == 0
    assert requests_mock.call_count == 1
    assert err.splitlines()[0] == (
        f"warning: the API key file {key_file} is readable by {who} (mode {mode:04o}): "
        f"chmod 600 {key_file}"
    )
    assert KEY not in err


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_for_its_owner_only_is_quiet(
    tmp_path: Path, cli: Cli, requests_mock: rm.Mocker, mode: int
) -> None:
    manifest = tmp_path / "m.yaml"
    write_models_manifest(manifest, ["model-000"])
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(mode)
    requests_mock.post(ENDPOINT, json={"status": "success", "message": "started"})
    code, _out, err = cli("apply", manifest, "--api-key-file", key_file)
    assert code == 0
    assert "warning" not in err


def test_key_file_warning_quotes_the_path_in_the_fix(tmp_path: Path, caplog: Any) -> None:
    from modelsync.settings import Settings

    key_file = tmp_path / "my key"
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(0o644)
    with caplog.at_level("WARNING", logger="modelsync"):
        assert Settings(str(tmp_path / "m.yaml"), api_key_file=str(key_file)).api_key() == KEY
    assert [r.getMessage() for r in caplog.records] == [
        f"the API key file {key_file} is readable by others (mode 0644): chmod 600 '{key_file}'"
    ]


def test_manifest_warnings_are_warnings_in_json_logs(tmp_path: Path, cli: Any) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\nmodels:\n  - model_id: a\n    url: http://example.com/a.safetensors\n"
        "    model_format: safetensors\n    model_category: stable_diffusion\n",
        encoding="utf-8",
    )
    code, _out, err = cli("--log-format", "json", "plan", manifest, "--state", tmp_path / "s.json")
    assert code == 0
    records = [json.loads(line) for line in err.splitlines()]
    (warning,) = [r for r in records if "http://" in r["message"]]
    assert warning["level"] == "warning"
