"""The pipeline formats: ``plan --output markdown``, ``apply --junit-xml``, ``--metrics-file``.

Renderers are tested by direct calls on hand-made plans and reports (exact text, the
60,000-character cut, escaping, masking); the command line through the in-process
sandbox, from a tmp_path that holds manifests/example.yaml.
"""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelsync import output, redact
from modelsync.errors import ExitCode, OutputError
from modelsync.formats import junit, markdown, metrics
from modelsync.plan import Change, FieldChange, Plan
from modelsync.records import ModelRecord
from modelsync.runner import ModelResult, Report
from tests.helpers import Cli

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "manifests/example.yaml"
CANARY = "canary-secret-7f3a91"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with manifests/example.yaml, as the current folder."""
    (tmp_path / "manifests").mkdir()
    shutil.copy(REPO / MANIFEST, tmp_path / MANIFEST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _markdown(plan: Plan, manifest: str = MANIFEST, **kw: int) -> str:
    return markdown.render_markdown(
        plan, manifest=manifest, summary=output.summary_line(plan), **kw
    )


# --------------------------------------------------------------------------- markdown


def _small_plan() -> Plan:
    failed = ModelRecord("sha256:1", {}, "failed", attempts=2, last_error="HTTP 503 from the API")
    return Plan(
        (
            Change("majicmix", "create", "no"),
            Change(
                "sdxl",
                "update",
                "yes",
                MappingProxyType(
                    {
                        "revision": FieldChange("fp16", "fp32"),
                        "model_image": FieldChange(None, "https://x.test/a.png"),
                    }
                ),
            ),
            Change("flux", "retry", "yes", previous=failed),
            Change("mine", "conflict"),
            Change("same", "unchanged"),
            Change("gone", "orphan"),
        )
    )


def test_markdown_small_plan_exact() -> None:
    assert _markdown(_small_plan()) == (
        "<!-- modelsync:plan:manifests/example.yaml -->\n"
        "### modelsync plan: manifests/example.yaml\n"
        "\n"
        "Plan: 1 to create, 1 to update, 1 to retry, 1 in conflict, 1 unchanged, 1 orphaned.\n"
        "\n"
        "| | model | action | force_load | changes |\n"
        "|---|---|---|---|---|\n"
        "| `+` | majicmix | create | no |  |\n"
        '| `~` | sdxl | update | yes | revision: "fp16" → "fp32"<br>'
        'model\\_image: (none) → "https://x.test/a.png" |\n'
        "| `↻` | flux | retry | yes | retry: HTTP 503 from the API |\n"
        "| `!` | mine | conflict | - | on the account, not put there by modelsync; "
        "apply skips it |\n"
        "| `-` | gone | orphan | - | in the state, not in the manifest; nothing is deleted "
        "remotely |"
    )


def test_markdown_no_changes_lists_no_unchanged_model() -> None:
    text = _markdown(Plan((Change("same", "unchanged"),)))
    assert text.splitlines()[-1] == markdown.NO_CHANGES
    assert "same" not in text
    assert "1 unchanged" in text


def test_markdown_marker_comes_first_and_cannot_end_the_comment() -> None:
    assert _markdown(_small_plan()).startswith("<!-- modelsync:plan:manifests/example.yaml -->\n")
    assert markdown.marker("a b/x-->y.yaml") == "<!-- modelsync:plan:a%20b/x-%2D%3Ey.yaml -->"


def test_markdown_escapes_ids_and_values() -> None:
    hostile = "a|b`c`<script>&amp;*_[x]"
    plan = Plan(
        (
            Change(
                hostile,
                "update",
                "yes",
                MappingProxyType({"model_name": FieldChange("x | y", "`<img src=x>`\nz")}),
            ),
        )
    )
    row = _markdown(plan).splitlines()[-1]
    assert row == (
        "| `~` | a\\|b\\`c\\`&lt;script&gt;&amp;amp;\\*\\_\\[x\\] | update | yes | "
        'model\\_name: "x \\| y" → "\\`&lt;img src=x&gt;\\`\\\\nz" |'
    )
    unescaped_pipes = len(row) - len(row.replace("|", "")) - row.count("\\|")
    assert unescaped_pipes == 6  # five cells
    assert "<" not in row and "`c`" not in row


def test_markdown_escape_keeps_newlines_in_the_cell() -> None:
    assert markdown.escape("a\nb\r\nc") == "a<br>b<br>c"


def test_markdown_masks_secrets() -> None:
    redact.register_secret(CANARY)
    url = f"https://civitai.com/api/download/models/1?token={CANARY}"
    plan = Plan((Change("m", "update", "yes", MappingProxyType({"url": FieldChange("a", url)})),))
    text = _markdown(plan)
    assert CANARY not in text
    assert "token=\\*\\*\\*" in text  # the mask, escaped: it renders as ***


def test_markdown_is_cut_at_a_row_boundary_with_what_was_left_out() -> None:
    ids = [f"model-{i:05d}-" + "x" * 60 for i in range(2000)]
    plan = Plan(tuple(Change(m, "create", "no") for m in ids))
    text = _markdown(plan)
    assert len(text) <= markdown.MAX_CHARS
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| `+` |")]
    assert all(line.endswith(" | create | no |  |") for line in rows)  # whole rows only
    left_out = len(ids) - len(rows)
    assert 0 < left_out < len(ids)
    assert lines[-1] == (
        f"**{left_out} more rows were left out** to keep this under 60,000 characters; "
        "run `modelsync plan manifests/example.yaml` to see the whole plan."
    )
    assert lines[-2] == ""
    assert rows[-1].split(" | ")[1] == ids[len(rows) - 1]
    # Not cut when one row less would have fitted the limit anyway.
    assert len(text) + len(rows[0]) > markdown.MAX_CHARS - len(lines[-1])


def test_markdown_fits_exactly_without_a_cut() -> None:
    plan = Plan(tuple(Change(f"m{i}", "create", "no") for i in range(3)))
    full = _markdown(plan)
    assert _markdown(plan, max_chars=len(full)) == full
    cut = _markdown(plan, max_chars=len(full) - 1)
    assert "row" in cut.splitlines()[-1] and "left out" in cut.splitlines()[-1]


# --------------------------------------------------------------------------- reports

MESSAGE = 'refused: <model & "quoted">'


def _report(exit_code: ExitCode = ExitCode.FAILED) -> Report:
    return Report(
        results=(
            ModelResult("ok-1", "create", "submitted", 1, 200, "model load started", 1.5),
            ModelResult("ok-2", "update", "submitted", 3, 200, "model load started", 0.25),
            ModelResult("bad", "create", "failed", 1, 400, MESSAGE, 0.5),
            ModelResult("down", "retry", "failed", 5, 503, "HTTP 503", 9.0),
            ModelResult("lost", "create", "failed", 2, None, "timed out", 20.0),
            ModelResult("theirs", "create", "conflict", 0, None, "already on the account", 0.0),
            ModelResult("late", "create", "skipped", 0, None, "not started: deadline", 0.0),
        ),
        unchanged=4,
        exit_code=exit_code,
        stop_reason="the --deadline passed",
        rate_limited=3,
        duration_s=31.25,
    )


def test_junit_counts_and_cases() -> None:
    root = ET.fromstring(junit.render_junit(_report(), manifest=MANIFEST))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.attrib == {
        "name": "modelsync apply manifests/example.yaml",
        "tests": "7",
        "failures": "4",
        "errors": "0",
        "skipped": "1",
        "time": "31.250",
    }
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "ok-1",
        "ok-2",
        "bad",
        "down",
        "lost",
        "theirs",
        "late",
    ]
    assert {c.get("classname") for c in cases} == {MANIFEST}
    assert cases[0].get("time") == "1.500" and list(cases[0]) == []
    kinds = {c.get("name"): [(e.tag, e.get("type")) for e in c] for c in cases}
    assert kinds["theirs"] == [("failure", "conflict")]  # a conflict is a failure
    assert kinds["down"] == [("failure", "failed")]
    assert kinds["late"] == [("skipped", None)]
    assert cases[-1].find("skipped").get("message") == "not started: deadline"  # type: ignore[union-attr]
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["exit_code"] == "1"
    assert properties["stop_reason"] == "the --deadline passed"


def test_junit_escapes_messages() -> None:
    text = junit.render_junit(_report(), manifest="a&b.yaml")
    assert 'message="refused: &lt;model &amp; &quot;quoted&quot;&gt;"' in text
    root = ET.fromstring(text)
    failure = root.find(".//testcase[@name='bad']/failure")
    assert failure is not None
    assert failure.get("message") == MESSAGE
    assert failure.text is not None and failure.text.startswith(MESSAGE + "\n")
    assert "last HTTP status: 400" in failure.text
    assert root.find("testsuite").get("name") == "modelsync apply a&b.yaml"  # type: ignore[union-attr]


def test_junit_masks_secrets() -> None:
    redact.register_secret(CANARY)
    report = Report(
        results=(ModelResult("m", "create", "failed", 1, 400, f"bad url ?token={CANARY}&x", 0.1),),
        unchanged=0,
        exit_code=ExitCode.FAILED,
    )
    text = junit.render_junit(report, manifest=MANIFEST)
    assert CANARY not in text
    assert ET.fromstring(text).find(".//failure").get("message") == "bad url ?token=***&x"  # type: ignore[union-attr]


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_metrics_parse_with_help_type_and_values() -> None:
    text = metrics.render_metrics(_report(), manifest=MANIFEST, now=2000.0, last_success=1000.0)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "modelsync_last_run_timestamp_seconds",
        "modelsync_last_success_timestamp_seconds",
        "modelsync_models",
        "modelsync_last_run_requests",
        "modelsync_last_run_rate_limited",
        "modelsync_run_duration_seconds",
        "modelsync_exit_code",
    }
    for family in families.values():
        assert family.documentation and family.type == "gauge", family.name
        assert all(s.labels["manifest"] == MANIFEST for s in family.samples)
    values = _families(text)
    models = {labels["outcome"]: v for labels, v in values["modelsync_models"]}
    assert models == {"submitted": 2, "failed": 3, "conflict": 1, "skipped": 1, "unchanged": 4}
    requests = {labels["class"]: v for labels, v in values["modelsync_last_run_requests"]}
    assert requests == {"2xx": 2, "4xx": 1, "5xx": 1, "error": 1}  # skipped/conflict: not sent
    assert values["modelsync_last_run_rate_limited"][0][1] == 3
    assert values["modelsync_run_duration_seconds"][0][1] == 31.25
    assert values["modelsync_exit_code"][0][1] == 1
    assert values["modelsync_last_run_timestamp_seconds"][0][1] == 2000
    assert values["modelsync_last_success_timestamp_seconds"][0][1] == 1000  # carried over


def test_metrics_success_sets_last_success_and_escapes_labels() -> None:
    manifest = 'odd "dir"\\m.yaml'
    text = metrics.render_metrics(
        _report(ExitCode.OK), manifest=manifest, now=3000.5, last_success=1000.0
    )
    values = _families(text)
    assert values["modelsync_last_success_timestamp_seconds"] == [({"manifest": manifest}, 3000.5)]
    assert metrics.previous_success(text, manifest) == 3000.5


def test_metrics_never_succeeded_is_zero() -> None:
    text = metrics.render_metrics(_report(), manifest=MANIFEST, now=5.0, last_success=None)
    assert _families(text)["modelsync_last_success_timestamp_seconds"][0][1] == 0
    assert metrics.previous_success(text, MANIFEST) is None


def test_metrics_previous_success_prefers_this_manifest() -> None:
    text = (
        "# a comment\n"
        'modelsync_last_success_timestamp_seconds{manifest="other.yaml"} 900\n'
        'modelsync_last_success_timestamp_seconds{manifest="m.yaml"} 800.5\n'
        "modelsync_last_success_timestamp_seconds_bogus 99\n"
    )
    assert metrics.previous_success(text, "m.yaml") == 800.5
    assert metrics.previous_success(text, "new.yaml") == 900
    assert metrics.previous_success("garbage\x00{{", "m.yaml") is None


def test_metrics_file_carries_last_success_over(tmp_path: Path) -> None:
    path = tmp_path / "modelsync.prom"
    output.write_run_files(_report(ExitCode.OK), MANIFEST, None, str(path))
    first = _families(path.read_text(encoding="utf-8"))
    success = first["modelsync_last_success_timestamp_seconds"][0][1]
    assert success == first["modelsync_last_run_timestamp_seconds"][0][1] > 0

    output.write_run_files(_report(ExitCode.FAILED), MANIFEST, None, str(path))
    second = _families(path.read_text(encoding="utf-8"))
    assert second["modelsync_last_success_timestamp_seconds"][0][1] == success
    assert second["modelsync_last_run_timestamp_seconds"][0][1] >= success
    assert second["modelsync_exit_code"][0][1] == 1
    assert os.listdir(tmp_path) == ["modelsync.prom"]  # atomic: no temp file left
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter reads it as another user


def test_write_file_failure_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "junit.xml"
    path.write_text("old", encoding="utf-8")

    def refuse(_src: str, _dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"cannot write the JUnit file .*No space left"):
        output.write_run_files(_report(), MANIFEST, str(path), None)
    assert os.listdir(tmp_path) == ["junit.xml"]
    assert path.read_text(encoding="utf-8") == "old"  # the old file stays whole


def test_nothing_written_for_a_dry_run(tmp_path: Path) -> None:
    output.write_run_files(None, MANIFEST, str(tmp_path / "j.xml"), str(tmp_path / "m.prom"))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- the CLI


def test_cli_plan_markdown(project: Path, cli: Cli) -> None:
    code, out, _ = cli("plan", MANIFEST, "--output", "markdown")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "<!-- modelsync:plan:manifests/example.yaml -->"
    assert "Plan: 5 to create, 0 to update, 0 to retry, 0 unchanged, 0 orphaned." in lines
    assert "| `+` | majicmix-realistic | create | no |  |" in lines


def test_cli_apply_dry_run_markdown(project: Path, cli: Cli) -> None:
    code, out, _ = cli("apply", "--sandbox", "--dry-run", MANIFEST, "-o", "markdown")
    assert code == 0
    assert out.startswith("<!-- modelsync:plan:manifests/example.yaml -->\n")


@pytest.mark.parametrize(
    "args",
    [
        ("apply", "--sandbox", MANIFEST, "--output", "markdown"),
        ("state", "list", MANIFEST, "--output", "markdown"),
    ],
)
def test_cli_markdown_only_for_a_plan(project: Path, cli: Cli, args: tuple[str, ...]) -> None:
    code, out, err = cli(*args)
    assert code == 64, err
    assert out == ""
    assert not (project / "manifests" / ".modelsync").exists()


def test_cli_apply_writes_junit_and_metrics(project: Path, cli: Cli) -> None:
    (project / "out").mkdir()
    code, _, err = cli(
        "apply", "--sandbox", MANIFEST, "--junit-xml", "out/junit.xml", "--metrics-file", "m.prom"
    )
    assert code == 0, err
    suite = ET.parse(project / "out" / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "0", "0")
    values = _families((project / "m.prom").read_text(encoding="utf-8"))
    models = {labels["outcome"]: v for labels, v in values["modelsync_models"]}
    assert models["submitted"] == 5
    assert values["modelsync_exit_code"] == [({"manifest": MANIFEST}, 0)]
    assert sorted(os.listdir(project)) == ["m.prom", "manifests", "out"]

    # Nothing to do the second time: still a success, every model unchanged.
    code, _, err = cli("apply", "--sandbox", MANIFEST, "--metrics-file", "m.prom")
    assert code == 0, err
    values = _families((project / "m.prom").read_text(encoding="utf-8"))
    models = {labels["outcome"]: v for labels, v in values["modelsync_models"]}
    assert (models["submitted"], models["unchanged"]) == (0, 5)


@pytest.mark.parametrize("option", ["--junit-xml", "--metrics-file"])
def test_cli_output_files_checked_before_anything_is_sent(
    project: Path, cli: Cli, option: str
) -> None:
    code, out, err = cli("apply", "--sandbox", MANIFEST, option, "no/such/folder/file")
    assert code == 64
    assert f"{option} no/such/folder/file: the folder" in err
    assert out == ""
    assert not (project / "manifests" / ".modelsync").exists()  # nothing sent, no state


# --------------------------------------------------------------------------- docs/cron.md

_RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_cron_doc_alert_rules_are_a_prometheus_rule_file() -> None:
    from tests.test_pipeline import fenced_blocks

    documents = [yaml.safe_load(b) for b in fenced_blocks(REPO / "docs" / "cron.md", "yaml")]
    (rules_file,) = [d for d in documents if isinstance(d, dict) and "groups" in d]
    assert set(rules_file) == {"groups"}
    rules = []
    for group in rules_file["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"} and group["name"]
        rules += group["rules"]
    by_name = {}
    for rule in rules:
        assert set(rule) <= _RULE_KEYS and ("alert" in rule) != ("record" in rule), rule
        assert all(isinstance(v, str) for v in rule.get("annotations", {}).values())
        by_name[rule["alert"]] = rule["expr"]
        # Every metric a rule reads is one modelsync writes.
        for name in re.findall(r"\bmodelsync_\w+", rule["expr"]):
            assert name in metrics.HELP, name
    no_success = "time() - modelsync_last_success_timestamp_seconds > 2 * 86400"
    assert by_name["ModelsyncNoSuccess"] == no_success
