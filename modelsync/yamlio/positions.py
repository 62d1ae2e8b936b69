"""Where each value of a loaded document is written, kept compactly once the values are built.

PyYAML's node graph knows every position, but holds two ``Mark`` objects per scalar: about
7 KB per model, several times the values themselves. The builders record instead, for each
mapping and list they build, its own start and the start of each member (a mapping's keys,
a list's items) as packed integers in one array, and the source text of the few scalars
that YAML typed (``1.10``, ``no``), so that a message can quote them as written.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_SHIFT = 32
_COLUMN = (1 << _SHIFT) - 1
_SCAN = 32  # keys of a mapping found by a scan; a larger one gets an index when asked


def pack(line: int, column: int) -> int:
    """A 0-based line and column (a PyYAML mark's) as one integer."""
    return line << _SHIFT | column


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in the source file."""

    line: int
    column: int


def unpack(packed: int) -> Position:
    """The 1-based position of a packed mark."""
    return Position((packed >> _SHIFT) + 1, (packed & _COLUMN) + 1)


class Positions:
    """Marks of built containers, keyed by the container (alive as long as the values).

    A mapping's entry is its own start, then the start of each key in the order of the
    dict (a key merged in with ``<<`` has the position where the source mapping wrote
    it); a list's entry is its own start, then the start of each item.
    """

    __slots__ = ("_indexes", "_marks", "_starts", "root", "texts")

    def __init__(self) -> None:
        self._marks = array("q")
        self._starts: dict[int, int] = {}
        self._indexes: dict[int, dict[Any, int]] = {}
        self.root = 0
        # (id of the container, key or index) -> the text of a scalar YAML typed.
        self.texts: dict[tuple[int, Any], str] = {}

    def add(self, container: dict[Any, Any] | list[Any], own: int, members: list[int]) -> None:
        """Record ``container``: its own packed start, then its members' (in order)."""
        self._starts[id(container)] = len(self._marks)
        self._marks.append(own)
        self._marks.extend(members)

    def own(self, container: Any) -> int | None:
        """The packed start of a built mapping or list, None for anything else."""
        start = self._starts.get(id(container))
        return None if start is None else self._marks[start]

    def member(self, container: Any, index: int) -> int:
        """The packed start of the index-th key (mapping) or item (list) of ``container``."""
        return self._marks[self._starts[id(container)] + 1 + index]

    def _index(self, mapping: dict[Any, Any], key: Any) -> int:
        """The place of ``key`` in ``mapping``; an index is kept for a large mapping."""
        if len(mapping) <= _SCAN:
            return list(mapping).index(key)
        index = self._indexes.get(id(mapping))
        if index is None:  # 100,000 problems in one mapping must not cost 100,000 scans
            index = self._indexes[id(mapping)] = {k: i for i, k in enumerate(mapping)}
        return index[key]

    def _step(self, node: Any, step: str | int) -> tuple[int, Any] | None:
        """(the packed start of the key or item, the value) of ``step`` in ``node``."""
        if type(node) is dict:
            key = step if isinstance(step, str) else str(step)
            if key not in node or id(node) not in self._starts:
                return None
            return self.member(node, self._index(node, key)), node[key]
        if type(node) is list and isinstance(step, int) and 0 <= step < len(node):
            if id(node) not in self._starts:  # pragma: no cover - every list is recorded
                return None
            return self.member(node, step), node[step]
        return None

    def position(self, data: Any, path: Sequence[str | int], *, of_key: bool = True) -> Position:
        """Where the value at ``path`` is written: its key, for a mapping member.

        With ``of_key`` False, where a mapping or list value itself starts (a scalar
        value of a mapping is placed at its key). A path that leaves the document stops
        at the last value it reached.
        """
        node, mark = data, self.root
        for step in path:
            found = self._step(node, step)
            if found is None:
                break
            mark, node = found
            if not of_key:
                own = self.own(node)
                mark = mark if own is None else own
        return unpack(mark)

    def source_text(self, data: Any, path: Sequence[str | int]) -> str | None:
        """The scalar as written at ``path`` (``1.10`` stays ``1.10``); None if not a scalar."""
        if not path:
            return None
        node = data
        for step in path[:-1]:
            found = self._step(node, step)
            if found is None:
                return None
            node = found[1]
        last = path[-1]
        if self._step(node, last) is None:
            return None
        key = last if type(node) is list or isinstance(last, str) else str(last)
        value = node[key]
        text = self.texts.get((id(node), key))
        if text is not None:
            return text
        return value if isinstance(value, str) else None

    def item_lines(self, items: list[Any]) -> list[int]:
        """The 1-based line where each item of a built list starts."""
        start = self._starts[id(items)] + 1
        return [(m >> _SHIFT) + 1 for m in self._marks[start : start + len(items)]]
