"""Guardrails that keep the layout from eroding, and proof that the test guards fire.

Each check first shows that it sees what it checks (the modules, the commands, the
classes of tests/helpers.py), so that none can pass by looking at nothing.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from radon.complexity import cc_visit
from radon.visitors import Class, Function

from modelsync.cli import cli as cli_group
from modelsync.store import default_location
from modelsync.store.file import FileBackend
from tests import helpers
from tests.conftest import (
    REAL_HOME,
    REPO,
    StateGuard,
    snapshot_state_folders,
    state_folder_changes,
    watched_folders,
)
from tests.helpers import Cli

PACKAGE = REPO / "modelsync"
TESTS = REPO / "tests"
MAX_MODULE_LINES = 500
MAX_CLI_LINES = 450
MAX_COMPLEXITY = 20
# The skin: the only modules that may import click (DESIGN: core modules never do).
CLICK_MODULES = {"cli.py", "cli_state.py", "error_handler.py", "output.py"}
# The command line, one module per command group: each is wiring, options -> one call.
CLI_MODULES = ("cli.py", "cli_state.py")
SUBPACKAGES = {"api", "commands", "manifest", "sandbox", "store", "yamlio"}


def modules() -> list[Path]:
    """Every module of the package."""
    found = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert PACKAGE / "cli.py" in found
    assert {p.parent.name for p in found} >= SUBPACKAGES, "the package's subpackages moved"
    return found


def name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


# --------------------------------------------------------------------------- size


def test_modules_are_at_most_500_lines() -> None:
    sizes = {name(p): line_count(p) for p in modules()}
    too_long = {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES}
    assert too_long == {}, f"split these modules (at most {MAX_MODULE_LINES} lines each)"


def test_cli_is_at_most_450_lines() -> None:
    for module in CLI_MODULES:
        lines = line_count(PACKAGE / module)
        assert lines <= MAX_CLI_LINES, (
            f"modelsync/{module} has {lines} lines (at most {MAX_CLI_LINES}): the command"
            " line is wiring; move the work into modelsync/commands/"
        )


# --------------------------------------------------------------------------- complexity


def functions(blocks: list[Function | Class]) -> Iterator[Function]:
    """Every function, method and closure among radon's blocks, once each (radon lists
    a method both on its own and in its class)."""
    seen: set[tuple[int, str]] = set()

    def walk(blocks: list[Function | Class]) -> Iterator[Function]:
        for block in blocks:
            if isinstance(block, Class):
                yield from walk([*block.methods, *block.inner_classes])
            elif (block.lineno, block.fullname) not in seen:
                seen.add((block.lineno, block.fullname))
                yield block
                yield from walk(block.closures)

    return walk(blocks)


def test_no_function_is_over_complexity_20() -> None:
    scores: dict[str, int] = {}
    for path in modules():
        for function in functions(cc_visit(path.read_text(encoding="utf-8"))):
            scores[f"{name(path)}:{function.lineno} {function.fullname}"] = function.complexity
    assert len(scores) > 100, "radon found too few functions: is the package there?"
    assert max(scores.values()) > 5
    too_complex = {f: c for f, c in scores.items() if c > MAX_COMPLEXITY}
    assert too_complex == {}, f"split these functions (cyclomatic complexity <= {MAX_COMPLEXITY})"


# --------------------------------------------------------------------------- click


def imports_click(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "click" for alias in node.names):
                return True
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "click"
        ):
            return True
    return False


def test_core_modules_never_import_click() -> None:
    importers = {name(p) for p in modules() if imports_click(p)}
    assert "modelsync/cli.py" in importers
    skin = {f"modelsync/{m}" for m in CLICK_MODULES}
    assert sorted(importers - skin) == [], (
        "core modules never import click: raise a ModelsyncError and let cli.py and "
        "error_handler.py turn it into output"
    )


# --------------------------------------------------------------------------- help


def commands(
    command: click.Command, path: tuple[str, ...] = ("modelsync",)
) -> Iterator[tuple[str, click.Command]]:
    """Every command and subcommand under ``command``, with its command line."""
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for sub_name, sub in sorted(command.commands.items()):
            yield from commands(sub, (*path, sub_name))


def test_every_command_has_help_text() -> None:
    found = dict(commands(cli_group))
    assert {"modelsync apply", "modelsync state rm", "modelsync sandbox"} <= set(found)
    without = sorted(line for line, command in found.items() if not (command.help or "").strip())
    assert without == [], "give these commands a docstring (their --help text)"


# --------------------------------------------------------------------------- tests


def shared_names() -> tuple[set[str], dict[str, str]]:
    """The classes of tests/helpers.py and its module-level string constants."""
    tree = ast.parse((TESTS / "helpers.py").read_text(encoding="utf-8"))
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    strings = {
        value: target
        for target, value in module_strings(tree)
        if value == getattr(helpers, target, None)
    }
    return classes, strings


def module_strings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(name, text) of each module-level ``NAME = "text"``."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for target in targets:
                if isinstance(target, ast.Name):
                    yield target.id, value.value


def copies_of_helpers(path: Path, classes: set[str], strings: dict[str, str]) -> list[str]:
    """What ``path`` defines again although tests/helpers.py provides it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = [
        f"{name(path)}:{node.lineno}: class {node.name} (use tests.helpers.{node.name})"
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name in classes
    ]
    found += [
        f"{name(path)}: {target} = {text!r} (use tests.helpers.{strings[text]})"
        for target, text in module_strings(tree)
        if text in strings
    ]
    return found


def test_test_modules_use_the_shared_helpers() -> None:
    classes, strings = shared_names()
    assert {"FakeClock", "Cli"} <= classes
    assert strings.get(helpers.ENDPOINT) == "ENDPOINT"
    # The check sees a copy: helpers.py itself is one.
    assert copies_of_helpers(TESTS / "helpers.py", classes, strings)
    copies = [
        line
        for path in sorted(TESTS.glob("*.py"))
        if path.name != "helpers.py"
        for line in copies_of_helpers(path, classes, strings)
    ]
    assert copies == []


# --------------------------------------------------------------------------- the guards


def test_state_guard_fails_a_test_opening_the_example_default_state(
    state_guard: StateGuard,
) -> None:
    example = REPO / "manifests" / "example.yaml"
    target = default_location(example)
    existed = target.parent.exists()
    backend = FileBackend(target, helpers.ENDPOINT)
    with pytest.raises(pytest.fail.Exception, match=r"manifests/\.modelsync/example\.state"):
        backend.open_writer(lock_timeout=0.0, command="test")
    assert state_guard.violations == [target.resolve()]
    assert target.parent.exists() == existed
    state_guard.violations.clear()  # the failure was this test's purpose


def test_state_guard_stops_apply_on_the_example_without_state(
    state_guard: StateGuard, cli: Cli
) -> None:
    example = REPO / "manifests" / "example.yaml"
    with pytest.raises(pytest.fail.Exception, match=r"example\.sandbox\.state\.json"):
        cli("apply", "--sandbox", example)
    assert [p.name for p in state_guard.violations] == ["example.sandbox.state.json"]
    state_guard.violations.clear()


def test_state_guard_allows_temporary_folders_and_refuses_the_home(tmp_path: Path) -> None:
    guard = StateGuard(protected=[REPO, REAL_HOME], allowed=[tmp_path])
    guard.check_write(tmp_path / "manifests" / ".modelsync" / "example.state.json")
    with pytest.raises(pytest.fail.Exception, match="must never write the real default state"):
        guard.check_write(REAL_HOME / ".modelsync" / "prod.state.json")
    assert guard.violations == [(REAL_HOME / ".modelsync" / "prod.state.json").resolve()]


def test_state_folder_changes_name_what_appeared_changed_and_went(tmp_path: Path) -> None:
    manifests, docs = tmp_path / "manifests", tmp_path / "docs"
    manifests.mkdir()
    docs.mkdir()
    (docs / ".modelsync").mkdir()
    (docs / ".modelsync" / "old.state.json").write_text("{}")
    before = snapshot_state_folders([manifests, docs])
    assert state_folder_changes(before, snapshot_state_folders([manifests, docs])) == []

    (manifests / ".modelsync").mkdir()
    (manifests / ".modelsync" / "example.state.json").write_text("{}")
    (docs / ".modelsync" / "old.state.json").write_text('{"serial": 2}')
    (docs / ".modelsync" / "extra.json").write_text("{}")
    after = snapshot_state_folders([manifests, docs])
    assert state_folder_changes(before, after) == [
        f"{manifests / '.modelsync'} appeared",
        f"{manifests / '.modelsync' / 'example.state.json'} appeared",
        f"{docs / '.modelsync' / 'extra.json'} appeared",
        f"{docs / '.modelsync' / 'old.state.json'} changed",
    ]
    (docs / ".modelsync" / "old.state.json").unlink()
    assert state_folder_changes(after, snapshot_state_folders([manifests, docs]))[-1] == (
        f"{docs / '.modelsync' / 'old.state.json'} disappeared"
    )


def test_watched_folders_hold_every_manifest_folder_of_the_repository() -> None:
    folders = watched_folders()
    assert {REPO, REPO / "manifests", REPO / "tests"} <= set(folders)
    assert all(not part.startswith(".") for f in folders for part in f.relative_to(REPO).parts)


def test_home_is_a_fresh_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = Path.home()
    assert home == Path(os.environ["HOME"])
    assert home.resolve() != REAL_HOME
    assert home.resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())
    assert list(home.iterdir()) == []
