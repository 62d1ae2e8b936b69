"""The package's metadata holds what it declares; its sdist can run its own tests.

- LICENSE is the MIT licence pyproject.toml declares, and ships in the sdist;
- the Python classifiers and ``requires-python`` agree (3.11 to 3.13);
- every runtime dependency has a ``>=`` floor (``.ci/run`` installs each floor on the oldest
  Python and runs the quick suite there: ``.ci/lowest_requirements.py``);
- the sdist, built offline and unpacked, installs in a fresh venv and runs a quick subset of
  its own tests (conftest, helpers, manifests, schemas and docs included), and every test
  module in it imports.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_wheel import fresh_venv, install_offline, run

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
SUPPORTED = ["3.11", "3.12", "3.13"]


def _lowest_requirements() -> ModuleType:
    path = REPO / ".ci" / "lowest_requirements.py"
    spec = importlib.util.spec_from_file_location("lowest_requirements", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_license_is_the_declared_mit_licence() -> None:
    assert PROJECT["license"] == "MIT"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 modelsync developers\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_python_classifiers_match_requires_python() -> None:
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions == SUPPORTED
    assert PROJECT["requires-python"] == f">={SUPPORTED[0]}"
    # tomllib (the tests read pyproject.toml with it) is 3.11+; so is the floor.
    assert tuple(map(int, SUPPORTED[0].split("."))) >= (3, 11)
    assert sys.version_info >= (3, 11)


def test_no_license_classifier_beside_the_license_expression() -> None:
    # PEP 639: the `license` expression replaces "License ::" classifiers.
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_urls_are_only_real_ones() -> None:
    # No public address yet: no placeholder URL pretends there is one.
    for url in PROJECT.get("urls", {}).values():
        assert "example" not in url and "<" not in url, url


def test_every_runtime_dependency_has_a_tested_floor() -> None:
    pins = _lowest_requirements().lowest(REPO / "pyproject.toml")
    names = [re.split(r"[=\[]", pin, maxsplit=1)[0].lower() for pin in pins]
    declared = [re.split(r"[>=\[ ;<]", r, maxsplit=1)[0].lower() for r in PROJECT["dependencies"]]
    assert set(declared) <= set(names)
    assert "psycopg" in names  # the postgres extra is a runtime dependency too
    assert all("==" in pin for pin in pins)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "lowest_requirements.py" in ci and '-m "not slow"' in ci


def test_lowest_requirements_refuses_a_dependency_without_a_floor(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["click>=8.2", "requests"]\n', encoding="utf-8"
    )
    with pytest.raises(SystemExit, match="'requests' has no '>=' floor"):
        _lowest_requirements().lowest(tmp_path / "pyproject.toml")


# --------------------------------------------------------------------------- the sdist

# What the tests of an unpacked sdist read, beside the package itself.
NEEDED = [
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    ".pre-commit-hooks.yaml",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/helpers.py",
    "tests/hostile.py",
    "tests/pg.py",
    "tests/state_child.py",
    "manifests/example.yaml",
    "schemas/manifest.schema.json",
    "schemas/plan.schema.json",
    "scripts/gen_docs.py",
    "docs/ci.md",
    "docs/cli.md",
    "docs/cron.md",
    "docs/manifest.md",
    "docs/state.md",
    "benchmarks/__init__.py",
    ".ci/lowest_requirements.py",
]
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    ".modelsync",
    ".hypothesis",
    ".*_cache",
    "node_modules",
)


def build_sdist(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES, symlinks=True)
    result = run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", "dist", "."],
        source,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = (source / "dist").glob("modelsync-*.tar.gz")
    return sdist


@pytest.mark.slow
def test_sdist_installs_and_runs_its_own_tests(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path)
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.removeprefix(top + "/") for name in archive.getnames()}
        archive.extractall(tmp_path / "unpacked", filter="data")
    missing = [name for name in NEEDED if name not in members]
    assert missing == [], f"the sdist lacks {missing}: see MANIFEST.in"
    shipped_tests = {m for m in members if re.fullmatch(r"tests/[^/]+\.py", m)}
    source_tests = {f"tests/{p.name}" for p in (REPO / "tests").glob("*.py")}
    assert sorted(source_tests - shipped_tests) == []
    assert not [m for m in members if "__pycache__" in m or "/.modelsync" in m]
    tree = tmp_path / "unpacked" / top

    venv = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    install_offline(python, sdist, tmp_path, "--no-build-isolation")
    version = run([str(venv / "bin" / "modelsync"), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("modelsync "), version

    env_ci = {k: v for k, v in os.environ.items() if k != "CI"}  # tool tests may skip here
    pytest_args = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collect = subprocess.run(
        [*pytest_args, "--collect-only"],
        cwd=tree,
        env=env_ci,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    quick = subprocess.run(
        [
            *pytest_args,
            "-m",
            "not slow",
            "-x",
            "tests/test_docs.py",
            "tests/test_manifest.py",
            "tests/test_docs_tools.py",
        ],
        cwd=tree,
        env=env_ci,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-3000:]
    assert " passed" in quick.stdout
