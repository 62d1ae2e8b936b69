"""The one strict, safe YAML loader (DESIGN §1, steps 1 and 2).

PyYAML composes the document into a node graph (libyaml's C parser when it is
there: it is several times faster and keeps line numbers); this module then builds
plain Python values from the nodes itself, so that it can:

- refuse every tag but the plain safe ones (``!!python/...``, custom tags);
- report a duplicate key in any mapping with both lines (PyYAML keeps the last);
- refuse a document whose aliases would expand it more than 10x ("billion laughs")
  before building anything;
- refuse nesting deeper than 64 levels without a ``RecursionError``;
- keep dates as text (:class:`YamlDate`, so a date where text is expected can be
  reported with "quote it") and remember the source text of every scalar;
- answer "where is this value?" for any path, so later steps (schema, checks) can
  name ``file:line:column``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelsync.errors import Diagnostic, ManifestError

MAX_FILE_BYTES = 16 * 1024 * 1024
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


# The scalar constructors are PyYAML's own (they know YAML 1.1's 0x, 0o, 1_000, .inf...);
# only the node walk around them is ours.
_scalars = yaml.constructor.SafeConstructor()


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


def read_text(path: Path) -> str:
    """Step 1: the file exists, is regular, at most 16 MiB, UTF-8 text, not empty."""
    name = str(path)

    def fail(message: str) -> ManifestError:
        return ManifestError([Diagnostic(name, 0, 0, message)])

    try:
        st = path.stat()
    except FileNotFoundError:
        raise fail("no such file; check the path") from None
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror}") from None
    if not path.is_file():
        raise fail("not a regular file; give the path of a YAML manifest")
    if st.st_size > MAX_FILE_BYTES:
        raise fail(
            f"the file is {st.st_size} bytes, more than the 16 MiB a manifest may be; "
            "split it into several manifests"
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise fail("the file is larger than the 16 MiB a manifest may be; split it")
    if b"\x00" in raw:
        raise fail(
            "this is a binary file (it holds NUL bytes), not a YAML manifest; "
            "give the path of the manifest"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            [
                Diagnostic(
                    name,
                    line,
                    column,
                    f"the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8",
                )
            ]
        ) from None
    if not text.strip():
        raise fail("the file is empty; a manifest needs at least 'version: 1' and 'models:'")
    return text


def load_yaml_file(path: Path) -> LoadedYaml:
    """Steps 1 and 2: read ``path`` and build its one document, strictly and safely."""
    return load_yaml_text(read_text(path), str(path))


def load_yaml_text(text: str, name: str) -> LoadedYaml:
    """Step 2 on text already read: safe, strict YAML with positions."""
    root = _compose(text, name)
    builder = _Builder()
    try:
        data = builder.build(root, (), 1)
    except _TooDeep as exc:
        raise _error_at(name, exc.node, _TOO_DEEP) from None
    if builder.shared:
        # Built values share aliased nodes, so building was linear; what comes after
        # (schema, JSON) would walk the expanded tree. Refuse a bomb before that.
        _check_graph(root, name)
    return LoadedYaml(name, data, root, tuple(builder.problems))


def _error_at(name: str, node: yaml.Node, message: str) -> ManifestError:
    """A manifest error at the start of ``node``."""
    mark = node.start_mark
    return ManifestError([Diagnostic(name, mark.line + 1, mark.column + 1, message)])


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def _compose(text: str, name: str) -> yaml.Node:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
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
