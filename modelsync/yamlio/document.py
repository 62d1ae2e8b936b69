"""The loaded document: values, their positions in the file, and the limits (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from modelsync.errors import Diagnostic, ManifestError
from modelsync.yamlio.positions import Position, Positions

# A 100,000-model manifest is about 30 MB; the limit only guards against a wrong file
# (a disk image, a log) being read whole.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
ALIAS_EXPANSION_LIMIT = 10
_TOO_DEEP = (
    f"nesting is deeper than {MAX_DEPTH} levels (a manifest needs 5): "
    "remove the extra brackets or indentation"
)

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_INT = _TAG + "int"
_FLOAT = _TAG + "float"
_BOOL = _TAG + "bool"
_NULL = _TAG + "null"
_TIMESTAMP = _TAG + "timestamp"
_MERGE = _TAG + "merge"
_MAP = _TAG + "map"
_SEQ = _TAG + "seq"


class YamlDate(str):
    """A scalar YAML would read as a date or time, kept as its text.

    It is a distinct type so that the schema step can say "quote it" where a string
    is expected, instead of silently accepting or converting it.
    """

    __slots__ = ()


@dataclass(frozen=True)
class Problem:
    """A problem found while building values: where (path and position) and what."""

    path: tuple[str | int, ...]
    line: int
    column: int
    message: str


@dataclass(frozen=True)
class LoadedYaml:
    """A loaded document: its plain value, where its values are written, and problems."""

    path: str
    data: Any
    positions: Positions
    problems: tuple[Problem, ...] = ()

    def position(self, path: Sequence[str | int], *, of_key: bool = True) -> Position:
        """Where the value at ``path`` is written (its key, for a mapping member)."""
        return self.positions.position(self.data, path, of_key=of_key)

    def source_text(self, path: Sequence[str | int]) -> str | None:
        """The scalar text as written at ``path`` (``1.10`` stays ``1.10``), if it is a scalar."""
        return self.positions.source_text(self.data, path)

    def item_lines(self, path: Sequence[str | int]) -> list[int]:
        """The line where each item of the list at ``path`` starts."""
        items = self.data
        for step in path:
            items = items[step]
        return self.positions.item_lines(items)


def bad_tag_message(tag: str) -> str:
    """The problem with a tag other than the plain safe ones."""
    shown = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
    return (
        f"the tag {shown} is not allowed: a manifest holds plain strings, numbers, "
        "lists and mappings; remove the tag"
    )


def _error_at(name: str, node: yaml.Node, message: str) -> ManifestError:
    """A manifest error at the start of ``node``."""
    mark = node.start_mark
    return ManifestError([Diagnostic(name, mark.line + 1, mark.column + 1, message)])


def describe_yaml_type(value: Any) -> str:
    """How YAML typed ``value``, in words for a "quote it" message."""
    if isinstance(value, YamlDate):
        return "a date"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null (empty)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "text"
