"""modelsync in pipelines, terminals and editors, as those see it.

The pre-commit hook, the CI and cron examples of the docs (parsed, and every ``modelsync``
command line in them checked against the real CLI without running it), shell completion,
the global options (JSON logs, colour, progress), the editor schema line, the version.
Commands run as subprocesses of the installed entry point where a pipeline would.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from modelsync import __version__, output
from modelsync.cli import cli, main
from modelsync.runner import ModelResult as Result
from modelsync.sandbox import Sandbox, SandboxConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# The console script of the running interpreter's environment, as pre-commit and CI run it.
_SCRIPT = Path(sys.executable).parent / "modelsync"
MODELSYNC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "modelsync"]

KEY = "msk-CANARY-3f9d1c7e-api-key"
TOKEN = "CANARY-8b2e4a61-civitai-token"
ESC = "\x1b"

GOOD = """\
version: 1
models:
  - model_id: civitai-checkpoint
    url: https://civitai.com/api/download/models/132760?type=Model&token=${CIVITAI_TOKEN}
    model_format: safetensors
    model_category: stable_diffusion
  - model_id: hf-repo
    url: org/some-model
    model_format: diffusers
    model_category: stable_diffusion_xl
"""
BAD = """\
version: 1
models:
  - model_id: broken
    url: https://huggingface.co/org/name/resolve/main/model.safetensors
    model_format: safetensor
    model_category: stable_diffusion
"""


def run_modelsync(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``modelsync ARGS`` as a separate process, stdin/stdout/stderr not terminals."""
    return subprocess.run(
        [*MODELSYNC, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with manifests/good.yaml and manifests/bad.yaml."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "good.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "manifests" / "bad.yaml").write_text(BAD, encoding="utf-8")
    return tmp_path


@pytest.fixture
def secrets_env() -> dict[str, str]:
    return {"MODELSYNC_API_KEY": KEY, "CIVITAI_TOKEN": TOKEN}


@pytest.fixture
def failing_api() -> Iterator[Sandbox]:
    """A sandbox on 127.0.0.1 that answers every load_model with a 5xx."""
    with Sandbox(SandboxConfig(api_key=KEY, fail_rate=1.0, seed=7)) as sandbox:
        yield sandbox


@pytest.fixture
def working_api() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(api_key=KEY)) as sandbox:
        yield sandbox


def apply_args(sandbox: Sandbox, *extra: str) -> list[str]:
    return [
        "apply",
        "manifests/good.yaml",
        "--endpoint",
        sandbox.load_model_url,
        "--state",
        "state.json",
        "--max-attempts",
        "1",
        *extra,
    ]


# --------------------------------------------------------------------------- command lines
# Command lines found in docs are checked against the CLI by parsing, never by running.

_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "|&", ";;"}
_REDIRECTIONS = {">", ">>", "<", ">&", "&>", ">|", "<<", "<<<", "<&", "&>>"}
_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(script: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """The simple commands of a shell script: (variable assignments, argv).

    Continuation lines are joined; redirections (``> plan.json``, ``>> "$FILE"``,
    ``2>&1``) and their targets are dropped; ``;``, ``&&``, ``||``, ``|`` and ``&``
    separate commands.
    """
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A file descriptor number glued to a redirection is not an argument: 2>&1, 2>file.
        line = re.sub(r"(?<![\w$])\d+(?=>)", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        command: list[str] = []
        skip_next = False
        for token in [*tokens, ";"]:
            if skip_next:
                skip_next = False
            elif token in _REDIRECTIONS:
                skip_next = True
            elif token in _SEPARATORS:
                if command:
                    yield _split_assignments(command)
                command = []
            else:
                command.append(token)


def _split_assignments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    while argv and (argv[0] in _KEYWORDS or _ASSIGNMENT.match(argv[0])):
        if argv[0] not in _KEYWORDS:
            name, _, value = argv[0].partition("=")
            env[name] = value
        argv = argv[1:]
    return env, argv


def modelsync_lines(script: str) -> list[tuple[dict[str, str], list[str]]]:
    """The ``modelsync`` commands of a script (any path to the program), without argv[0]."""
    return [
        (env, argv[1:])
        for env, argv in shell_commands(script)
        if argv and argv[0].rsplit("/", 1)[-1] == "modelsync"
    ]


def _remaining(ctx: click.Context) -> list[str]:
    # click >= 8.2 keeps the subcommand name apart from ctx.args; click 8.1 in protected_args.
    protected = ctx.__dict__.get("_protected_args")
    if protected is None:  # pragma: no cover - click < 8.2
        protected = ctx.protected_args
    return [*protected, *ctx.args]


def check_command_line(env: dict[str, str], args: list[str]) -> None:
    """Parse ``modelsync ARGS`` as the CLI would, running nothing; raise click's error if wrong.

    Every option, choice, range and required argument is checked, down to the leaf command.
    """
    if "_MODELSYNC_COMPLETE" in env:
        assert env["_MODELSYNC_COMPLETE"] in {"bash_source", "zsh_source", "fish_source"}
        assert args == []
        return
    try:
        ctx = cli.make_context("modelsync", list(args))
        command: click.Command = cli
        while isinstance(command, click.Group):
            rest = _remaining(ctx)
            if not rest:
                raise click.UsageError("a command is missing", ctx)
            name, sub, rest = command.resolve_command(ctx, rest)
            assert name is not None and sub is not None
            ctx = sub.make_context(name, rest, parent=ctx)
            command = sub
        assert not ctx.args, f"unexpected arguments {ctx.args}"
    except click.exceptions.Exit as exc:  # --version / --help: eager, valid
        assert exc.exit_code == 0


def assert_valid_command_line(env: dict[str, str], args: list[str], where: str) -> None:
    try:
        check_command_line(env, args)
    except click.ClickException as exc:
        pytest.fail(f"{where}: `modelsync {shlex.join(args)}`: {exc.format_message()}")


def fenced_blocks(path: Path, *languages: str) -> list[str]:
    """The fenced code blocks of a Markdown file in these languages, in order."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
    return [m.group(2) for m in pattern.finditer(text) if m.group(1) in languages]


def _scripts_in(node: Any) -> Iterator[str]:
    """Every shell script of a CI document: the values of run, script, before_script..."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("run", "script", "before_script", "after_script"):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    assert isinstance(item, str), f"{key}: {item!r} is not a command"
                    yield item
            else:
                yield from _scripts_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _scripts_in(item)


def test_shell_commands_handles_what_ci_scripts_use() -> None:
    script = (
        "set +e\n"
        "MODELSYNC_API_KEY=x modelsync plan m.yaml --detailed-exitcode --output json > plan.json\n"
        'echo "code=$?" >> "$GITHUB_OUTPUT"\n'
        "cd /srv && /usr/local/bin/modelsync apply m.yaml 2>&1 || alert-modelsync $?\n"
        "modelsync validate \\\n  a.yaml b.yaml\n"
        "echo '### modelsync plan'\n"
        "if modelsync -q validate m.yaml; then exit 0; fi\n"
    )
    assert modelsync_lines(script) == [
        ({"MODELSYNC_API_KEY": "x"}, ["plan", "m.yaml", "--detailed-exitcode", "--output", "json"]),
        ({}, ["apply", "m.yaml"]),
        ({}, ["validate", "a.yaml", "b.yaml"]),
        ({}, ["-q", "validate", "m.yaml"]),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "modelsync plan m.yaml --color never",  # a global option after the command
        "modelsync plan m.yaml --output yaml",
        "modelsync --log-format xml plan m.yaml",
        "modelsync apply m.yaml --parallelism 0",
        "modelsync apply m.yaml --no-such-option",
        "modelsync apply",
        "modelsync state lst m.yaml",
        "modelsync state show m.yaml",
        "modelsync state",
        "modelsync",
        "modelsync plan a.yaml b.yaml",
    ],
)
def test_command_line_check_rejects_mistakes(line: str) -> None:
    ((env, args),) = modelsync_lines(line)
    with pytest.raises((click.ClickException, AssertionError)):
        check_command_line(env, args)


@pytest.mark.parametrize(
    "line",
    [
        "modelsync --version",
        "modelsync -q --color never --log-format json apply m.yaml --only 'a-*' -l team=x",
        "modelsync state list m.yaml -o json",
        "modelsync state rm a b m.yaml --lock-timeout 5",
        "modelsync plan --help",
    ],
)
def test_command_line_check_accepts_valid_lines(line: str) -> None:
    ((env, args),) = modelsync_lines(line)
    check_command_line(env, args)


# --------------------------------------------------------------------------- CI and cron docs


def _ci_documents() -> list[Any]:
    return [yaml.safe_load(block) for block in fenced_blocks(DOCS / "ci.md", "yaml")]


def test_ci_examples_are_yaml_with_the_expected_structure() -> None:
    documents = _ci_documents()
    github = [d for d in documents if isinstance(d, dict) and "jobs" in d]
    gitlab = [d for d in documents if isinstance(d, dict) and "stages" in d]
    precommit = [d for d in documents if isinstance(d, dict) and "repos" in d]
    assert (len(github), len(gitlab), len(precommit)) == (1, 1, 1), documents

    (workflow,) = github
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"}
    # At the workflow level a pull request's plan could cancel an apply waiting in the group.
    assert "concurrency" not in workflow
    assert workflow["jobs"]["apply"]["concurrency"]["cancel-in-progress"] is False
    assert set(workflow["jobs"]) == {"plan", "apply"}
    for name, job in workflow["jobs"].items():
        assert job["runs-on"], name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: {step}"

    (pipeline,) = gitlab
    stages = pipeline["stages"]
    jobs = {k: v for k, v in pipeline.items() if isinstance(v, dict) and "script" in v}
    assert set(jobs) == {"validate", "plan", "apply"}
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert job["rules"], name
    assert jobs["apply"]["resource_group"]
    # The merge key brought the cache's key and paths in.
    assert jobs["plan"]["cache"]["key"] == jobs["apply"]["cache"]["key"]
    assert jobs["apply"]["cache"]["paths"] == ["manifests/.modelsync/"]

    (config,) = precommit
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [hook["id"] for hook in hooks] == [_hook()["id"]]


def _ci_command_lines() -> list[tuple[str, dict[str, str], list[str]]]:
    found = []
    for document in _ci_documents():
        for script in _scripts_in(document):
            for env, args in modelsync_lines(script):
                found.append(("docs/ci.md", env, args))
    return found


def _cron_command_lines() -> list[tuple[str, dict[str, str], list[str]]]:
    cron = DOCS / "cron.md"
    found = []
    for block in fenced_blocks(cron, "cron"):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                fields = line.split(None, 5)
                assert len(fields) == 6, f"not a crontab line: {line!r}"
                found += [("docs/cron.md crontab", e, a) for e, a in modelsync_lines(fields[5])]
    for block in fenced_blocks(cron, "ini"):
        for line in block.splitlines():
            if line.startswith("ExecStart="):
                command = line.removeprefix("ExecStart=")
                found += [("docs/cron.md ExecStart", e, a) for e, a in modelsync_lines(command)]
    return found


def _console_command_lines() -> list[tuple[str, dict[str, str], list[str]]]:
    found = []
    for path in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in fenced_blocks(path, "console", "sh", "shell", "bash"):
            lines = block.splitlines()
            if any(line.startswith("$ ") for line in lines):  # a session: only the prompts
                lines = [line[2:] for line in lines if line.startswith("$ ")]
            for env, args in modelsync_lines("\n".join(lines)):
                found.append((path.relative_to(REPO).as_posix(), env, args))
    return found


def _command_name(args: list[str]) -> str:
    ctx = cli.make_context("modelsync", list(args))
    return _remaining(ctx)[0]


def test_ci_and_cron_docs_have_the_expected_command_lines() -> None:
    ci = _ci_command_lines()
    cron = _cron_command_lines()
    assert [_command_name(args) for _, _, args in ci] == [
        "validate",
        "plan",
        "plan",
        "apply",
        "validate",
        "plan",
        "plan",
        "apply",
    ]
    assert len(cron) == 2
    assert all("--api-key-file" in args for _, _, args in cron)


@pytest.mark.parametrize(
    ("where", "env", "args"),
    [
        pytest.param(where, env, args, id=f"{where}: modelsync {shlex.join(args)}")
        for where, env, args in [
            *_ci_command_lines(),
            *_cron_command_lines(),
            *_console_command_lines(),
        ]
    ],
)
def test_documented_command_line_is_valid(
    where: str,
    env: dict[str, str],
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # path parameters are looked at from an empty folder
    assert_valid_command_line(env, args, where)


def test_docs_install_from_the_repository() -> None:
    # modelsync is not on a public index and has no tag: no line may pretend otherwise.
    ci = (DOCS / "ci.md").read_text(encoding="utf-8")
    assert re.findall(r"pip install '?modelsync(?:\[\w+\])?(?:==\S*)?'?(?!\s*@)(?=\s|$)", ci) == []
    assert re.findall(r"rev: v\d", ci) == []
    assert "git+https://<the modelsync repository URL>@<commit>" in ci


def test_ci_doc_names_the_test_that_checks_it() -> None:
    assert "tests/test_pipeline.py" in (DOCS / "ci.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- help and examples


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


@pytest.mark.parametrize("path", [(), *_commands(cli)], ids=lambda p: " ".join(p) or "modelsync")
def test_every_command_has_help_with_valid_examples(
    path: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main([*path, "--help"]) == 0
    help_text = capsys.readouterr().out
    description = help_text.split("\n\n", 2)[1].strip()
    assert description, f"modelsync {' '.join(path)} has no help text"
    match = re.search(r"^ *Examples?:\n((?: {4,}.*\n)+)", help_text, flags=re.M)
    assert match, f"modelsync {' '.join(path)} --help has no Example"
    examples = modelsync_lines(match.group(1))
    assert examples, match.group(1)
    monkeypatch.chdir(tmp_path)
    for env, args in examples:
        assert args[: len(path)] == list(path) or "apply" in args, args
        assert_valid_command_line(env, args, f"modelsync {' '.join(path)} --help")


# --------------------------------------------------------------------------- pre-commit


def _hook() -> dict[str, Any]:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert isinstance(hooks, list) and len(hooks) == 1
    hook: dict[str, Any] = hooks[0]
    return hook


def test_pre_commit_hook_fields() -> None:
    hook = _hook()
    assert hook["id"] == "modelsync-validate"
    assert hook["name"]
    assert hook["description"]
    assert hook["language"] == "python"  # pre-commit pip-installs this repository
    assert hook["entry"] == "modelsync validate"
    assert hook["types"] == ["yaml"]
    assert hook.get("pass_filenames", True) is True
    files = re.compile(hook["files"])
    for name in ("manifests/prod.yaml", "manifests/team/a.yml"):
        assert files.search(name), name
    for name in ("docs/ci.yaml", "manifests/.modelsync/prod.state.json", "prod.yaml"):
        assert not files.search(name), name
    # The entry's program is the console script the package installs.
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert hook["entry"].split()[0] in pyproject["project"]["scripts"]


def _run_hook(project: Path, *filenames: str) -> subprocess.CompletedProcess[str]:
    """The hook as pre-commit runs it: entry, split, then the matching staged files."""
    hook = _hook()
    files = re.compile(hook["files"])
    program, *args = shlex.split(hook["entry"])
    assert program == "modelsync"
    matching = [name for name in filenames if files.search(name)]
    # validate interpolates ${VAR}: docs/ci.md says to export the token variables.
    return run_modelsync([*args, *matching], cwd=project, env={"CIVITAI_TOKEN": "placeholder"})


def test_pre_commit_hook_passes_a_good_manifest(project: Path) -> None:
    result = _run_hook(project, "manifests/good.yaml", "README.md")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "manifests/good.yaml: valid (2 models)\n"


def test_pre_commit_hook_fails_a_bad_manifest_with_3(project: Path) -> None:
    result = _run_hook(project, "manifests/good.yaml", "manifests/bad.yaml")
    assert result.returncode == 3
    assert result.stdout == "manifests/good.yaml: valid (2 models)\n"
    assert result.stderr == (
        "manifests/bad.yaml:5:5: models[0] (id 'broken'): model_format: 'safetensor' is not "
        "one of 'diffusers', 'safetensors', 'ckpt' (did you mean 'safetensors'?)\n"
        "manifests/bad.yaml: invalid (1 problem)\n"
    )


# --------------------------------------------------------------------------- completion


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _modelsync_completion modelsync"),
        ("zsh", "#compdef modelsync"),
        ("fish", "complete --no-files --command modelsync"),
    ],
)
def test_completion_script_for_each_shell(shell: str, marker: str, tmp_path: Path) -> None:
    result = run_modelsync([], tmp_path, env={"_MODELSYNC_COMPLETE": f"{shell}_source"})
    assert (result.returncode, result.stderr) == (0, "")
    assert marker in result.stdout
    assert f"_MODELSYNC_COMPLETE={shell}_complete" in result.stdout


def _complete(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shell: str, line: str
) -> str:
    words = line.split(" ")
    monkeypatch.setenv("_MODELSYNC_COMPLETE", f"{shell}_complete")
    monkeypatch.setenv("COMP_WORDS", line)
    # bash and zsh give the index of the word under the cursor; fish gives the word itself.
    monkeypatch.setenv("COMP_CWORD", words[-1] if shell == "fish" else str(len(words) - 1))
    capsys.readouterr()
    assert main([]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "plain,plan\n"),
        ("zsh", "plain\nplan\nShow what apply would do.\n"),
        ("fish", "plain,plan\tShow what apply would do.\n"),
    ],
)
def test_completion_of_a_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shell: str, expected: str
) -> None:
    assert _complete(monkeypatch, capsys, shell, "modelsync pl") == expected


def test_completion_of_subcommands_and_choices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _complete(monkeypatch, capsys, "bash", "modelsync state l") == "plain,list\n"
    assert _complete(monkeypatch, capsys, "bash", "modelsync --color ").splitlines() == [
        "plain,auto",
        "plain,always",
        "plain,never",
    ]
    assert "plain,--detailed-exitcode" in _complete(
        monkeypatch, capsys, "bash", "modelsync plan --d"
    )


def test_completion_is_documented() -> None:
    cli_doc = (DOCS / "cli.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_MODELSYNC_COMPLETE={shell}_source modelsync" in cli_doc
    assert "_MODELSYNC_COMPLETE=bash_source modelsync" in readme


# --------------------------------------------------------------------------- global options


def test_json_logs_of_a_failing_apply_are_json_lines_without_secrets(
    project: Path, failing_api: Sandbox, secrets_env: dict[str, str]
) -> None:
    result = run_modelsync(
        ["-vv", "--log-format", "json", *apply_args(failing_api, "--report", "report.json")],
        project,
        env=secrets_env,
    )
    assert result.returncode == 1, result.stderr
    assert failing_api.stats()["load_model"] == 2  # the key and the token were really sent
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records, "no log records"
    for record in records:
        assert isinstance(record, dict)
        assert record["level"] in {"debug", "info", "warning", "error"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert isinstance(record["message"], str) and record["message"]
    failed = {r["model_id"] for r in records if r.get("outcome") == "failed"}
    assert failed == {"civitai-checkpoint", "hf-repo"}
    assert any(r["level"] == "debug" for r in records)  # -vv: every attempt
    assert "Apply: 0 submitted, 2 failed" in result.stdout
    written = [p.read_text(encoding="utf-8") for p in project.rglob("*") if p.is_file()]
    for secret in (KEY, TOKEN):
        for text in (result.stdout, result.stderr, *written):
            assert secret not in text


def test_json_logs_of_an_invalid_manifest(project: Path) -> None:
    result = run_modelsync(["--log-format", "json", "validate", "manifests/bad.yaml"], project)
    assert result.returncode == 3
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["level"] for r in records] == ["error", "error"]
    assert records[0]["message"].startswith("manifests/bad.yaml:5:5: models[0] (id 'broken')")
    assert records[-1]["message"] == "manifests/bad.yaml: invalid (1 problem)"


def test_quiet_leaves_the_product_and_problems(
    project: Path, working_api: Sandbox, secrets_env: dict[str, str]
) -> None:
    result = run_modelsync(["-q", "validate", "manifests/good.yaml"], project, secrets_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run_modelsync(["-q", *apply_args(working_api)], project, env=secrets_env)
    assert (result.returncode, result.stderr) == (0, "")
    assert "Apply: 2 submitted, 0 failed, 0 skipped, 0 unchanged." in result.stdout


_COLOUR_RUNS = {
    "validate": (["validate", "manifests/good.yaml", "manifests/bad.yaml"], 3),
    "plan": (["plan", "manifests/good.yaml", "--state", "state.json"], 0),
    "apply": (None, 1),
}


@pytest.mark.parametrize("command", list(_COLOUR_RUNS))
@pytest.mark.parametrize(
    ("options", "no_color"),
    [(["--color", "never"], None), (["--color", "always"], "1"), ([], "1")],
    ids=["color-never", "NO_COLOR-beats-always", "NO_COLOR"],
)
def test_no_escape_sequences_without_colour(
    project: Path,
    failing_api: Sandbox,
    secrets_env: dict[str, str],
    command: str,
    options: list[str],
    no_color: str | None,
) -> None:
    args, code = _COLOUR_RUNS[command]
    env = {**secrets_env, **({"NO_COLOR": no_color} if no_color else {})}
    result = run_modelsync([*options, *(args or apply_args(failing_api))], project, env=env)
    assert result.returncode == code, result.stderr
    assert result.stdout or result.stderr
    assert ESC not in result.stdout
    assert ESC not in result.stderr


def test_color_always_does_colour_plan_and_apply(
    project: Path, failing_api: Sandbox, secrets_env: dict[str, str]
) -> None:
    # The counterpart of the test above: the same runs do carry escapes when allowed.
    plan = run_modelsync(["--color", "always", *_COLOUR_RUNS["plan"][0]], project, secrets_env)
    assert ESC in plan.stdout
    apply = run_modelsync(["--color", "always", *apply_args(failing_api)], project, secrets_env)
    assert ESC in apply.stdout
    assert ESC in apply.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(
    project: Path, working_api: Sandbox, secrets_env: dict[str, str]
) -> None:
    result = run_modelsync(apply_args(working_api), project, env=secrets_env)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "Applying" not in result.stderr
    assert "#" not in result.stderr
    lines = sorted(line.split(" (")[0] for line in result.stderr.splitlines())
    assert lines == ["civitai-checkpoint: submitted", "hf-repo: submitted"]


def test_progress_bar_on_a_terminal(
    project: Path, working_api: Sandbox, secrets_env: dict[str, str]
) -> None:
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*MODELSYNC, *apply_args(working_api)],
            cwd=project,
            env={**os.environ, **secrets_env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
    finally:
        os.close(terminal)
    seen = b""
    try:
        while select.select([controller], [], [], 30)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0, seen
    text = seen.decode("utf-8", "replace")
    assert "Applying" in text
    assert "2/2" in text
    assert b"Apply: 2 submitted" in stdout
    assert "Applying" not in stdout.decode()


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _result(model_id: str, outcome: str = "submitted") -> Result:
    return Result(model_id, "create", outcome, 1, 200, "model load started", 0.01)  # type: ignore[arg-type]


def test_progress_draws_a_bar_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    output.setup_logging(0, "text", color=False)
    stream = _FakeTerminal()
    with output.Progress(enabled=True, stream=stream) as progress:
        progress.start(2)
        progress.result(_result("a"))
        progress.result(_result("b"))
    drawn = stream.getvalue()
    assert "Applying" in drawn
    assert "2/2" in drawn
    assert capsys.readouterr().err == ""  # successes are the bar's, not log lines


@pytest.mark.parametrize(
    ("stream", "enabled"), [(io.StringIO(), True), (_FakeTerminal(), False)], ids=["pipe", "json"]
)
def test_progress_logs_a_line_per_result_without_a_bar(
    capsys: pytest.CaptureFixture[str], stream: io.StringIO, enabled: bool
) -> None:
    output.setup_logging(0, "text", color=False)
    with output.Progress(enabled=enabled, stream=stream) as progress:
        progress.start(1)
        progress.result(_result("a"))
    assert stream.getvalue() == ""
    assert capsys.readouterr().err == "a: submitted (create, 1 attempt, 0.01 s)\n"


# --------------------------------------------------------------------------- editor


MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def test_example_manifest_names_the_schema_for_editors() -> None:
    example = REPO / "manifests" / "example.yaml"
    first = example.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.match(first)
    assert match, first
    schema = (example.parent / match.group(1)).resolve()
    assert schema == (REPO / "modelsync" / "schemas" / "manifest.schema.json").resolve()
    assert json.loads(schema.read_text(encoding="utf-8"))["title"]


def test_documented_editor_settings_name_the_schema() -> None:
    manifest_doc = DOCS / "manifest.md"
    schema = (REPO / "modelsync" / "schemas" / "manifest.schema.json").resolve()
    modelines = [
        MODELINE.match(block.splitlines()[0])
        for block in fenced_blocks(manifest_doc, "yaml") + fenced_blocks(REPO / "README.md", "yaml")
        if block.startswith("# yaml-language-server")
    ]
    assert len(modelines) >= 3
    for match in modelines:
        assert match and (REPO / "manifests" / match.group(1)).resolve() == schema
    (settings,) = [json.loads(b) for b in fenced_blocks(manifest_doc, "json")]
    for path, globs in settings["yaml.schemas"].items():
        assert (REPO / path).resolve() == schema
        assert "manifests/*.yaml" in globs


# --------------------------------------------------------------------------- version


def test_version_is_the_package_and_changelog_release(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"modelsync {__version__}\n"
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "[Keep a Changelog](https://keepachangelog.com/" in changelog
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", changelog, flags=re.M)
    assert headings[0] == ("Unreleased", "")
    release, rest = headings[1]
    assert release == __version__
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), rest


def test_version_of_the_installed_command(tmp_path: Path) -> None:
    result = run_modelsync(["--version"], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"modelsync {__version__}\n",
        "",
    )
