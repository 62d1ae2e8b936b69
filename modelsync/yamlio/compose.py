"""Step 2, first half: text -> one YAML node graph, with every parser error in plain words.

PyYAML composes the document (libyaml's C parser when it is there: it is several times
faster and keeps line numbers); nothing is constructed here. The graph is then checked
for alias bombs and deep nesting before anything walks it expanded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from modelsync.errors import Diagnostic, ManifestError
from modelsync.yamlio.document import (
    _MAP,
    _SEQ,
    _STR,
    _TOO_DEEP,
    ALIAS_EXPANSION_LIMIT,
    MAX_DEPTH,
    _error_at,
)

try:  # libyaml is optional: PyYAML falls back to its pure-Python parser.
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader with a leaner tag resolver.

    Even with libyaml, PyYAML calls the Python resolver once per scalar; the stock one
    also walks path resolvers, which safe loading never uses. Same regexes, same tags.
    """

    _implicit = yaml.SafeLoader.yaml_implicit_resolvers
    # libyaml's composer also calls these two around every node, for path resolvers,
    # which safe loading never has: builtins that take the same arguments and do nothing.
    descend_resolver: Any = {}.get
    ascend_resolver = tuple

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            if implicit[0]:
                resolvers = (
                    self._implicit.get(value[:1], ()) if value else self._implicit.get("", ())
                )
                for tag, regexp in resolvers:
                    if regexp.match(value):
                        return str(tag)
            return _STR
        if kind is yaml.SequenceNode:
            return _SEQ
        return _MAP


@contextmanager
def parse_errors(text: str, name: str) -> Iterator[None]:
    """PyYAML's parser errors, raised in the block, as ManifestError in plain words."""
    try:
        yield
    except yaml.MarkedYAMLError as exc:
        raise ManifestError([_yaml_error(exc, name, text)]) from None
    except yaml.reader.ReaderError as exc:
        # A control character; PyYAML's text would show the "<unicode string>" internals.
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise ManifestError(
            [
                Diagnostic(
                    name,
                    line,
                    column,
                    f"the control character U+{exc.character:04X} is not allowed in YAML; "
                    "delete it (an editor that shows invisible characters helps)",
                )
            ]
        ) from None
    except yaml.YAMLError:  # pragma: no cover - PyYAML marks every other error
        raise ManifestError(
            [Diagnostic(name, 0, 0, "the file is not valid YAML; check its syntax")]
        ) from None
    except RecursionError:
        # Only the pure-Python composer recurses; libyaml stops at 1000 levels itself.
        raise ManifestError([Diagnostic(name, 0, 0, _TOO_DEEP)]) from None


def _compose(text: str, name: str) -> yaml.Node:
    loader = _Loader(text)
    try:
        with parse_errors(text, name):
            root = loader.get_single_node()
    finally:
        loader.dispose()
    if root is None:
        raise ManifestError(
            [
                Diagnostic(
                    name,
                    0,
                    0,
                    "the file has no YAML document (only comments or blanks); "
                    "a manifest needs at least 'version: 1' and 'models:'",
                )
            ]
        )
    node: yaml.Node = root
    return node


# PyYAML's problems, in plain words with the fix (and never PyYAML's own text, which
# differs between libyaml and the pure-Python parser). The first match wins; "context"
# says the position of the construct that was left open is the useful one.
_SYNTAX_FIXES: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (
        ("mapping values are not allowed",),
        False,
        "a ':' where no key can start: quote a value that contains ': ', "
        "or fix the indentation of this line",
    ),
    (
        ("expected '-' indicator", "expected <block end>", "did not find expected key"),
        False,
        "this line is not indented like the lines above it: "
        "indent the fields of one mapping by the same number of spaces",
    ),
    (
        ("could not find expected ':'",),
        True,
        "a line that is not 'key: value' (or a quote or bracket left open above it): "
        "write 'key: value'",
    ),
    (
        ("end of stream",),
        True,
        "a quoted value or bracket is not closed before the end of the file: close it",
    ),
    (
        ("expected ',' or ']'", "expected ',' or '}'"),
        True,
        "a [list] or {mapping} that is not closed, or items not separated by ',': "
        "close the bracket, or quote a value that contains ',' or ':'",
    ),
    (
        ("undefined alias",),
        False,
        "an alias (*name) with no anchor (&name) before it: define the anchor first, "
        "or fix the name",
    ),
    (
        ("duplicate anchor",),
        False,
        "the same anchor (&name) is defined twice: rename one",
    ),
    (
        ("unknown escape character",),
        False,
        "an unknown backslash escape in a double-quoted value: "
        "use single quotes, or write the backslash twice",
    ),
    (
        ("while scanning an alias", "while scanning an anchor"),
        False,
        "'*' and '&' start an alias or an anchor: quote a value that starts with them",
    ),
    (
        ("directive", "incompatible YAML document"),
        False,
        "a line that starts with '%' is a YAML directive: remove it, or quote the value",
    ),
)


def _yaml_error(exc: yaml.MarkedYAMLError, name: str, text: str) -> Diagnostic:
    """A parser error as a diagnostic in plain words: what is wrong and the fix."""
    problem = exc.problem or ""
    context = exc.context or ""
    found = problem + " " + context
    mark = exc.problem_mark or exc.context_mark
    if "maximum nesting depth" in found:
        message = _TOO_DEEP
    elif "expected a single document" in found:
        message = (
            "the file holds more than one YAML document ('---'); "
            "a manifest is exactly one document: remove the extra '---' or split the file"
        )
    elif "cannot start any token" in found or "tab character" in found:
        char = _char_at(text, mark)
        if char == "\t" or "tab character" in found:
            message = (
                "YAML syntax error: a tab character; YAML indents with spaces only: "
                "replace the tab with spaces"
            )
        else:
            message = (
                f"YAML syntax error: a value cannot start with {char!r}: "
                f"quote the value ('{char}...')"
            )
    else:
        message = (
            "YAML syntax error: check this line and the one above it "
            "(indentation, quotes, brackets)"
        )
        for needles, at_context, words in _SYNTAX_FIXES:
            if any(needle in found for needle in needles):
                message = f"YAML syntax error: {words}"
                if at_context and exc.context_mark is not None:
                    mark = exc.context_mark
                if "duplicate anchor" in found and exc.context_mark is not None:
                    message += f" (first at line {exc.context_mark.line + 1})"
                break
    if mark is None:  # pragma: no cover - PyYAML marks its syntax errors
        return Diagnostic(name, 0, 0, message)
    return Diagnostic(name, mark.line + 1, mark.column + 1, message)


def _char_at(text: str, mark: yaml.Mark | None) -> str:
    if mark is None:  # pragma: no cover
        return "?"
    lines = text.split("\n")
    if mark.line < len(lines) and mark.column < len(lines[mark.line]):
        return lines[mark.line][mark.column]
    return "?"  # pragma: no cover - the mark is always on a character


def _iter_children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield key_node
            yield value_node
    elif isinstance(node, yaml.SequenceNode):
        yield from node.value


def _check_graph(root: yaml.Node, name: str) -> None:
    """Refuse alias bombs and deep nesting, in time linear in the distinct nodes."""
    # Depth and distinct nodes, iteratively (no recursion on hostile input).
    order: list[yaml.Node] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _error_at(name, node, _TOO_DEEP)
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        for child in _iter_children(node):
            stack.append((child, depth + 1))
    distinct = len(order)
    # Expanded size: each node counts once per path that reaches it. Children come
    # after their parents in `order`, so walking it backwards sizes children first.
    size: dict[int, int] = {}
    limit = ALIAS_EXPANSION_LIMIT * distinct
    for node in reversed(order):
        total = 1
        for child in _iter_children(node):
            total += size.get(id(child), 1)
        if total > limit:
            raise _error_at(
                name,
                node,
                f"aliases would expand the document to more than {limit} nodes, over "
                f"{ALIAS_EXPANSION_LIMIT}x its {distinct} nodes (an alias bomb); "
                "write the values out or use fewer nested aliases",
            )
        size[id(node)] = total
