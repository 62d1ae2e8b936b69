"""Step 2, second half: plain Python values from a composed node graph, strictly.

Only the plain safe tags; a duplicate key in any mapping reported with both lines;
``<<`` merges; dates kept as text (:class:`YamlDate`); every problem collected.
"""

from __future__ import annotations

from typing import Any

import yaml

from modelsync.yamlio.document import (
    _BOOL,
    _FLOAT,
    _INT,
    _MAP,
    _MERGE,
    _NULL,
    _SEQ,
    _STR,
    _TIMESTAMP,
    MAX_DEPTH,
    Problem,
    YamlDate,
    bad_tag_message,
    describe_yaml_type,
)
from modelsync.yamlio.positions import Positions, pack

# The scalar constructors are PyYAML's own (they know YAML 1.1's 0x, 0o, 1_000, .inf...);
# only the node walk around them is ours.
_scalars = yaml.constructor.SafeConstructor()
_MERGE_AS_VALUE = "'<<' (merge) is only allowed as a mapping key; quote it to mean the text"


def scalar_value(tag: str, text: str) -> tuple[Any, str | None]:
    """The value of a scalar of resolved ``tag``, and the problem with it if any."""
    if tag == _STR:
        return text, None
    if tag == _NULL:
        return None, None
    if tag == _BOOL:
        return _scalars.construct_yaml_bool(yaml.ScalarNode(tag, text)), None
    if tag == _INT:
        return _scalars.construct_yaml_int(yaml.ScalarNode(tag, text)), None
    if tag == _FLOAT:
        return _scalars.construct_yaml_float(yaml.ScalarNode(tag, text)), None
    if tag == _TIMESTAMP:
        return YamlDate(text), None
    if tag == _MERGE:
        return text, _MERGE_AS_VALUE
    return text, bad_tag_message(tag)


def _key_problem(text: str, key: Any) -> str:
    # Every key of a manifest is a name: `yes:` must not become 'True'.
    return (
        f"the key {text} is read by YAML as {describe_yaml_type(key)}, not text; "
        f'quote it: "{text}":'
    )


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def _packed(node: yaml.Node) -> int:
    return pack(node.start_mark.line, node.start_mark.column)


class _Builder:
    """Builds plain values from a checked node graph, collecting every problem.

    The general path, for documents the event builder (:mod:`.events`) does not take:
    anchors, aliases, merges, complex keys, deep nesting. It records the same positions.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.positions = Positions()
        self._done: dict[int, Any] = {}
        self.shared = False

    def _error(self, node: yaml.Node, path: tuple[str | int, ...], message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(path, mark.line + 1, mark.column + 1, message))

    def build(self, node: yaml.Node, path: tuple[str | int, ...], depth: int) -> Any:
        # Aliased nodes are built once and shared, as PyYAML does.
        key = id(node)
        if key in self._done:
            self.shared = True
            return self._done[key]
        if isinstance(node, yaml.ScalarNode):
            value = self._scalar(node, path)
        elif depth > MAX_DEPTH:
            raise _TooDeep(node)
        elif isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self._error(node, path, bad_tag_message(node.tag))
            value = [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
            self.positions.add(value, _packed(node), [_packed(child) for child in node.value])
            for i, child in enumerate(node.value):
                self._keep_text(value, i, child, value[i])
        else:
            assert isinstance(node, yaml.MappingNode)
            if node.tag != _MAP:
                self._error(node, path, bad_tag_message(node.tag))
            value = self._mapping(node, path, depth)
        self._done[key] = value
        return value

    def _keep_text(self, container: Any, key: Any, node: yaml.Node, value: Any) -> None:
        if isinstance(node, yaml.ScalarNode) and not isinstance(value, (str, dict, list)):
            self.positions.texts[(id(container), key)] = str(node.value)

    def _scalar(self, node: yaml.ScalarNode, path: tuple[str | int, ...]) -> Any:
        value, problem = scalar_value(node.tag, node.value)
        if problem is not None:
            self._error(node, path, problem)
        return value

    def _mapping(
        self, node: yaml.MappingNode, path: tuple[str | int, ...], depth: int
    ) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        marks: list[int] = []
        first_line: dict[Any, int] = {}
        merged: dict[Any, tuple[Any, int, str | None]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self._merge_into(merged, value_node, path, depth)
                continue
            key: Any
            if type(key_node) is yaml.ScalarNode:
                key = self._scalar(key_node, path)
                if not isinstance(key, str):
                    self._error(key_node, path, _key_problem(key_node.value, key))
                    key = key_node.value
            else:
                key = self.build(key_node, path, depth + 1)
            if isinstance(key, (dict, list)):
                self._error(
                    key_node,
                    path,
                    "a mapping key must be plain text, not a list or mapping; write 'name: value'",
                )
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                self._error(
                    key_node,
                    path,
                    f"duplicate key {str(key)!r} (first at line {first_line[key]}); "
                    "YAML would silently keep only the last one: remove one",
                )
                continue
            first_line[key] = line
            result[key] = self.build(value_node, (*path, key), depth + 1)
            marks.append(_packed(key_node))
            self._keep_text(result, key, value_node, result[key])
        for key, (value, mark, text) in merged.items():
            if key not in result:
                result[key] = value
                marks.append(mark)
                if text is not None:
                    self.positions.texts[(id(result), key)] = text
        self.positions.add(result, _packed(node), marks)
        return result

    def _merge_into(
        self,
        merged: dict[Any, tuple[Any, int, str | None]],
        value_node: yaml.Node,
        path: tuple[str | int, ...],
        depth: int,
    ) -> None:
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            value = self.build(source, path, depth + 1)
            if not isinstance(value, dict):
                self._error(
                    source,
                    path,
                    "'<<' merges a mapping (or a list of mappings) only: "
                    "write '<<: *name' where '&name' anchors a mapping",
                )
                continue
            texts = self.positions.texts
            for index, (key, item) in enumerate(value.items()):
                # Earlier sources win, as in the YAML merge key spec.
                if key not in merged:
                    mark = self.positions.member(value, index)
                    merged[key] = (item, mark, texts.get((id(value), key)))
