"""The wheel: built from the sources, installed in a fresh venv, run from there.

The wheel must hold every module and data file of the package: a wheel without one
subpackage (``sandbox``, say) still runs ``schema`` and breaks ``apply --sandbox``, so the
file list is compared with the sources and ``apply --sandbox`` runs from the venv too.

Offline by construction: the wheel is built without build isolation (the running
environment's setuptools, from the ``test`` extra) and installed with ``--no-index``;
the runtime dependencies come from the running environment through a ``.pth`` file,
so nothing is downloaded. The sources are copied first so the build never writes
into the work tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_NO_INDEX"] = "1"  # never the network, whatever the command
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "modelsync",
        source / "modelsync",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = tmp_path / "dist"
    result = run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), "."],
        source,
    )
    assert result.returncode == 0, (
        "building the wheel offline failed; the running environment needs the build backend "
        "of pyproject.toml [build-system] (pip install -e '.[test]' installs it):\n"
        + result.stdout[-3000:]
        + result.stderr[-3000:]
    )
    wheels = list(dist.glob("modelsync-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def package_files(root: Path) -> set[str]:
    """The files of the ``modelsync`` package under ``root``, as wheel entry names."""
    return {
        path.relative_to(root).as_posix()
        for path in (root / "modelsync").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    result = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    )
    # The runtime dependencies (click, PyYAML, jsonschema...) from the running environment.
    # A path in a .pth file is appended after the venv's own site-packages and its own .pth
    # files are not run, so the editable install of the work tree stays out of sight.
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site.stdout.strip(), "parent-deps.pth").write_text("\n".join(sorted(parent)) + "\n")
    return venv


def install_offline(python: Path, artifact: Path, cwd: Path, *flags: str) -> str:
    """pip-install a built wheel or sdist into ``python``'s venv, offline; its output."""
    install = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            *flags,
            str(artifact),
        ],
        cwd,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return install.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        shipped_files = set(archive.namelist())
    sources = package_files(tmp_path / "src")
    subpackages = sorted(
        name for name in sources if name.endswith("/__init__.py") and name.count("/") == 2
    )
    assert {n.split("/")[1] for n in subpackages} >= {
        "api",
        "commands",
        "manifest",
        "sandbox",
        "store",
        "yamlio",
    }, subpackages
    assert sorted(set(subpackages) - shipped_files) == []
    assert sorted(sources - shipped_files) == [], "the wheel lacks files of the package"

    venv = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    install_offline(python, wheel, tmp_path)

    where = run([str(python), "-c", "import modelsync; print(modelsync.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    script = venv / "bin" / "modelsync"
    schema = run([str(script), "schema"], tmp_path)
    assert schema.returncode == 0, schema.stderr
    shipped = (REPO / "modelsync" / "schemas" / "manifest.schema.json").read_text("utf-8")
    assert schema.stdout == shipped
    assert schema.stderr == ""

    example = REPO / "manifests" / "example.yaml"
    validate = run([str(script), "validate", str(example)], tmp_path)
    assert (validate.returncode, validate.stderr) == (0, ""), validate.stdout + validate.stderr
    assert validate.stdout.startswith(f"{example}: valid (")

    # The sandbox state goes beside the copy: never into the work tree.
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy2(example, workdir / "example.yaml")
    sandbox = run([str(script), "apply", "--sandbox", "example.yaml", "--deadline", "60"], workdir)
    assert sandbox.returncode == 0, sandbox.stdout + sandbox.stderr
    assert "Apply: 5 submitted, 0 failed," in sandbox.stdout, sandbox.stdout + sandbox.stderr
    assert (workdir / ".modelsync" / "example.sandbox.state.json").is_file()
    assert not (workdir / ".modelsync" / "example.state.json").exists()
