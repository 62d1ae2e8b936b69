"""The loaded document: values, their positions in the file, and the limits (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from modelsync.errors import Diagnostic, ManifestError

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
class Position:
    """A 1-based line and column in the source file."""

    line: int
    column: int


@dataclass(frozen=True)
class Problem:
    """A problem found while building values: where (path and position) and what."""

    path: tuple[str | int, ...]
    line: int
    column: int
    message: str


@dataclass(frozen=True)
class LoadedYaml:
    """A loaded document: its plain value, the node graph for positions, and problems."""

    path: str
    data: Any
    root: yaml.Node
    problems: tuple[Problem, ...] = ()

    def position(self, path: Sequence[str | int], *, of_key: bool = True) -> Position:
        """Where the value at ``path`` is written (its key, for a mapping member)."""
        node = self.root
        mark = node.start_mark
        for step in path:
            found = _child(node, step)
            if found is None:
                break
            key_node, node = found
            mark = key_node.start_mark if (of_key and key_node is not None) else node.start_mark
        return Position(mark.line + 1, mark.column + 1)

    def source_text(self, path: Sequence[str | int]) -> str | None:
        """The scalar text as written at ``path`` (``1.10`` stays ``1.10``), if it is a scalar."""
        node: yaml.Node | None = self.root
        for step in path:
            found = _child(node, step) if node is not None else None
            if found is None:
                return None
            node = found[1]
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        return None


def _child(node: yaml.Node, step: str | int) -> tuple[Any, yaml.Node] | None:
    """The (key node, value node) of ``step`` in ``node``, looking through ``<<`` merges."""
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
        if 0 <= step < len(node.value):
            return None, node.value[step]
        return None
    if isinstance(node, yaml.MappingNode):
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
            elif isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                return key_node, value_node
        for merged in merges:
            sources = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
            for source in sources:
                found = _child(source, step)
                if found is not None:
                    return found
    return None


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
