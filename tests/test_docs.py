"""The generated docs match their sources (scripts/gen_docs.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

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
    for category in schema["$defs"]["model"]["properties"]["model_category"]["enum"]:
        assert f"`{category}`" in reference


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
