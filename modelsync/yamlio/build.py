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
    _TAG,
    _TIMESTAMP,
    MAX_DEPTH,
    Problem,
    YamlDate,
    describe_yaml_type,
)

# The scalar constructors are PyYAML's own (they know YAML 1.1's 0x, 0o, 1_000, .inf...);
# only the node walk around them is ours.
_scalars = yaml.constructor.SafeConstructor()


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _Builder:
    """Builds plain values from a checked node graph, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
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
                self._bad_tag(node, path)
            value = [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        else:
            assert isinstance(node, yaml.MappingNode)
            if node.tag != _MAP:
                self._bad_tag(node, path)
            value = self._mapping(node, path, depth)
        self._done[key] = value
        return value

    def _bad_tag(self, node: yaml.Node, path: tuple[str | int, ...]) -> None:
        tag = node.tag
        shown = "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag
        self._error(
            node,
            path,
            f"the tag {shown} is not allowed: a manifest holds plain strings, numbers, "
            "lists and mappings; remove the tag",
        )

    def _scalar(self, node: yaml.ScalarNode, path: tuple[str | int, ...]) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return _scalars.construct_yaml_bool(node)
        if tag == _INT:
            return _scalars.construct_yaml_int(node)
        if tag == _FLOAT:
            return _scalars.construct_yaml_float(node)
        if tag == _TIMESTAMP:
            return YamlDate(node.value)
        if tag == _MERGE:
            self._error(
                node,
                path,
                "'<<' (merge) is only allowed as a mapping key; quote it to mean the text",
            )
            return node.value
        self._bad_tag(node, path)
        return node.value

    def _mapping(
        self, node: yaml.MappingNode, path: tuple[str | int, ...], depth: int
    ) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self._merge_into(merged, value_node, path, depth)
                continue
            key: Any
            if type(key_node) is yaml.ScalarNode:
                key = self._scalar(key_node, path)
                if not isinstance(key, str):
                    # Every key of a manifest is a name: `yes:` must not become 'True'.
                    self._error(
                        key_node,
                        path,
                        f"the key {key_node.value} is read by YAML as "
                        f'{describe_yaml_type(key)}, not text; quote it: "{key_node.value}":',
                    )
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
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _merge_into(
        self,
        merged: dict[Any, Any],
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
            for key, item in value.items():
                # Earlier sources win, as in the YAML merge key spec.
                merged.setdefault(key, item)
