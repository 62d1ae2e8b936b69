"""Print the lowest declared version of every runtime dependency, one pip requirement a line.

Read from pyproject.toml: ``[project] dependencies`` and every extra except ``test``, each
``name[extras]>=X`` becomes ``name[extras]==X``. A runtime dependency without a ``>=`` floor
is an error: a floor that is never installed is never tested.

    python .ci/lowest_requirements.py > lowest.txt && pip install -r lowest.txt -e '.[test]'
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)\s*>=\s*([^,;\s]+)\s*(;.*)?$")


def lowest(pyproject: Path) -> list[str]:
    """``name==floor`` for each runtime requirement of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra != "test":
            requirements += items
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if not match:
            raise SystemExit(f"{pyproject}: {requirement!r} has no '>=' floor to test")
        name, version, marker = match.groups()
        pins[name.lower()] = f"{name}=={version}{marker or ''}"
    return sorted(pins.values(), key=str.lower)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print("\n".join(lowest(root / "pyproject.toml")))
