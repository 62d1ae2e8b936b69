"""The generated docs match their sources (scripts/gen_docs.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import click
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def test_manifest_reference_is_up_to_date() -> None:
    text = (REPO / "docs" / "manifest.md").read_text(encoding="utf-8")
    target = next(t for t in gen_docs.TARGETS if t.path == "docs/manifest.md")
    assert text == gen_docs.expected_text(text, target), (
        "docs/manifest.md differs from the schema: run python scripts/gen_docs.py"
    )


def test_check_mode_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen_docs.main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def test_reference_lists_every_field_of_the_schema() -> None:
    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text("utf-8"))
    reference = gen_docs.render_manifest_reference()
    fields = [*schema["properties"], *schema["$defs"]["model"]["properties"]]
    fields += [*schema["properties"]["target"]["properties"]]
    for name in fields:
        assert f"| `{name}` |" in reference, name
    category = schema["$defs"]["model"]["properties"]["model_category"]
    values = [v for branch in category["anyOf"] for v in branch.get("enum", [branch.get("const")])]
    assert len(values) == 11
    for value in values:
        assert f"`{value}`" in reference


def _copy_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for target in gen_docs.TARGETS:
        shutil.copy2(REPO / target.path, tmp_path / target.path)
    return tmp_path / "docs" / "manifest.md"


def test_check_mode_fails_on_drift_and_update_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _copy_docs(tmp_path)
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace("Display name on the account", "Display name"), "utf-8")
    assert gen_docs.main(["--check"], root=tmp_path) == 1
    assert "docs/manifest.md is out of date" in capsys.readouterr().err
    assert gen_docs.main([], root=tmp_path) == 0
    assert path.read_text(encoding="utf-8") == original
    assert gen_docs.main(["--check"], root=tmp_path) == 0


def test_hand_written_part_is_kept(tmp_path: Path) -> None:
    path = _copy_docs(tmp_path)
    original = path.read_text(encoding="utf-8")
    path.write_text("# A new title\n" + original, "utf-8")
    assert gen_docs.main([], root=tmp_path) == 0
    assert path.read_text(encoding="utf-8") == "# A new title\n" + original


def test_missing_marker_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy_docs(tmp_path)
    path.write_text("# The manifest\n\nno marker here\n", "utf-8")
    assert gen_docs.main(["--check"], root=tmp_path) == 2
    assert "no marker line" in capsys.readouterr().err


# --------------------------------------------------------------------------- docs/cli.md


def test_cli_reference_is_up_to_date() -> None:
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    target = next(t for t in gen_docs.TARGETS if t.path == "docs/cli.md")
    assert text == gen_docs.expected_text(text, target), (
        "docs/cli.md differs from the CLI: run python scripts/gen_docs.py"
    )


def _walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, f"{path} {name}")


def test_cli_reference_has_every_command_and_option() -> None:
    from modelsync.cli import cli

    reference = gen_docs.render_cli_reference()
    for path, command in _walk(cli, "modelsync"):
        assert f"`{path}`\n\n```text\nUsage: {path} [OPTIONS]" in reference, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert f"| `{', '.join(sorted(param.opts, key=len))}` |" in reference, param.opts
                assert param.help and gen_docs._cell(gen_docs._text(param.help)) in reference
                if isinstance(param.type, click.Choice):
                    assert " \\| ".join(f"`{c}`" for c in param.type.choices) in reference


def test_cli_reference_check_fails_when_the_cli_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsync.cli import cli

    _copy_docs(tmp_path)
    plan = cli.commands["plan"]
    option = next(p for p in plan.params if p.name == "detailed_exitcode")
    monkeypatch.setattr(option, "help", "Exit 2 on changes.")
    assert gen_docs.main(["--check"], root=tmp_path) == 1
    assert "docs/cli.md is out of date with modelsync/cli.py" in capsys.readouterr().err
    assert gen_docs.main([], root=tmp_path) == 0
    assert "| `--detailed-exitcode` | flag |  | Exit 2 on changes. |" in (
        tmp_path / "docs" / "cli.md"
    ).read_text(encoding="utf-8")


def test_cli_reference_keeps_the_hand_written_intro() -> None:
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    intro = text.split(gen_docs.MARKER, 1)[0]
    for heading in ("## Global options", "## Exit codes", "## Shell completion"):
        assert heading in intro
    for code in (0, 1, 2, 3, 4, 5, 64, 70):
        assert f"\n| {code} |" in intro
