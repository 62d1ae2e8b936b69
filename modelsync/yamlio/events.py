"""Step 2, the usual way: plain values straight from libyaml's events, without a node graph.

A manifest is mappings, lists and scalars. Building its values from the parser's events
costs about a third less time than composing PyYAML's node graph and walking it, and a
fraction of the memory: the graph holds two ``Mark`` objects per scalar, and is whole before
the first value can be built (DESIGN §7: 100,000 models in linear time and memory).

Anything else (an anchor or an alias, a ``<<`` merge, a list or mapping as a key, nesting
deeper than the limit, a second document) raises :class:`NotPlain` and the caller loads the
document through the node graph (:mod:`.build`), which handles all of YAML; both give the
same values, problems and positions.
"""

from __future__ import annotations

from typing import Any

import yaml

from modelsync.yamlio.build import _key_problem, scalar_value
from modelsync.yamlio.document import (
    _MAP,
    _MERGE,
    _SEQ,
    _STR,
    MAX_DEPTH,
    Problem,
    bad_tag_message,
)
from modelsync.yamlio.positions import Positions, pack

_Scalar = yaml.ScalarEvent
_MappingStart = yaml.MappingStartEvent
_MappingEnd = yaml.MappingEndEvent
_SequenceStart = yaml.SequenceStartEvent
_SequenceEnd = yaml.SequenceEndEvent
# A plain scalar whose first character starts none of YAML's implicit types is text; the
# others go through the resolver (the empty one is null).
_TYPED_FIRST = frozenset(yaml.SafeLoader.yaml_implicit_resolvers) | {""}
_KNOWN_TEXT_LIMIT = 4096


class NotPlain(Exception):
    """The document needs the node graph (anchors, aliases, merges, complex keys...)."""


class EventBuilder:
    """Builds a document's values from a loader's events, recording positions and problems."""

    def __init__(self, loader: Any) -> None:
        self._next = loader.get_event
        self._resolve = loader.resolve
        self.positions = Positions()
        self.problems: list[Problem] = []
        # Plain scalars that start like a typed one but are text ('team', 'fp16', 'no-op'):
        # a manifest repeats them on every model, the resolver's regexes need not.
        self._known_text: set[str] = set()
        self._names: dict[str, str] = {}

    def document(self) -> Any:
        """The one document's value; NotPlain when it is not a plain single document."""
        get = self._next
        get()  # the stream start
        if not isinstance(get(), yaml.DocumentStartEvent):
            raise NotPlain  # no document: the node graph words it
        event = get()
        value = self._node(event, (), 1)
        if type(value) not in (dict, list):
            self.positions.root = pack(event.start_mark.line, event.start_mark.column)
        else:
            self.positions.root = self.positions.own(value) or 0
        get()  # the document end
        if not isinstance(get(), yaml.StreamEndEvent):
            raise NotPlain  # a second document
        return value

    def _node(self, event: Any, path: tuple[str | int, ...], depth: int) -> Any:
        kind = type(event)
        if kind is _Scalar:
            return self._scalar(event, path, None, None)
        if event.anchor is not None or depth > MAX_DEPTH:
            raise NotPlain
        if kind is _MappingStart:
            self._check_tag(event, _MAP, path)
            return self._mapping(event, path, depth)
        if kind is _SequenceStart:
            self._check_tag(event, _SEQ, path)
            return self._sequence(event, path, depth)
        raise NotPlain  # an alias

    def _check_tag(self, event: Any, plain: str, path: tuple[str | int, ...]) -> None:
        tag = event.tag
        if tag is not None and tag != "!" and tag != plain:
            mark = event.start_mark
            problem = Problem(path, mark.line + 1, mark.column + 1, bad_tag_message(tag))
            self.problems.append(problem)

    def _scalar(self, event: Any, path: tuple[str | int, ...], container: Any, key: Any) -> Any:
        """A scalar's value (the slow way: typed, tagged, or for a problem)."""
        if event.anchor is not None:
            raise NotPlain
        text = event.value
        tag = self._tag(event)
        if tag == _STR:
            return text
        value, problem = scalar_value(tag, text)
        if problem is not None:
            mark = event.start_mark
            self.problems.append(Problem(path, mark.line + 1, mark.column + 1, problem))
        elif container is not None and not isinstance(value, str):
            self.positions.texts[(id(container), key)] = text
        return value

    def _tag(self, event: Any) -> str:
        """The scalar's tag: as written, or resolved from its text as PyYAML does."""
        tag = event.tag
        if tag is not None and tag != "!":
            return str(tag)
        text = event.value
        resolved = str(self._resolve(yaml.ScalarNode, text, event.implicit))
        plain = tag is None and event.implicit[0]  # a quoted "yes" says nothing of yes
        if resolved == _STR and plain and len(self._known_text) < _KNOWN_TEXT_LIMIT:
            self._known_text.add(text)
        return resolved

    def _mapping(self, start: Any, path: tuple[str | int, ...], depth: int) -> dict[Any, Any]:
        # The hot loop of a large manifest: a text key and a text value take no call.
        result: dict[Any, Any] = {}
        marks: dict[Any, int] = {}  # each key's packed mark, in the order of ``result``
        get, known, names = self._next, self._known_text, self._names
        while True:
            event = get()
            kind = type(event)
            if kind is _MappingEnd:
                break
            if kind is not _Scalar:
                raise NotPlain  # a list or mapping as a key
            key = event.value
            mark = event.start_mark
            if (
                event.tag is None
                and event.anchor is None
                and (not event.implicit[0] or key[:1] not in _TYPED_FIRST or key in known)
            ):
                if len(names) < _KNOWN_TEXT_LIMIT:
                    key = names.setdefault(key, key)  # every model repeats them: one copy each
            else:
                key = self._key(event, path)
            event = get()
            if key in marks:
                self._duplicate(mark, key, marks[key], path)
                self._skip(event, depth + 1)
                continue
            marks[key] = mark.line << 32 | mark.column
            if type(event) is not _Scalar:
                result[key] = self._node(event, (*path, key), depth + 1)
                continue
            text = event.value
            if (
                event.tag is None
                and event.anchor is None
                and (not event.implicit[0] or text[:1] not in _TYPED_FIRST or text in known)
            ):
                result[key] = text
            else:
                result[key] = self._scalar(event, (*path, key), result, key)
        mark = start.start_mark
        self.positions.add(result, pack(mark.line, mark.column), list(marks.values()))
        return result

    def _value(
        self, event: Any, path: tuple[str | int, ...], container: Any, key: Any, depth: int
    ) -> Any:
        if type(event) is _Scalar:
            return self._scalar(event, (*path, key), container, key)
        return self._node(event, (*path, key), depth + 1)

    def _key(self, event: Any, path: tuple[str | int, ...]) -> Any:
        """A mapping key that is typed, tagged or odd: text, or a problem and its text."""
        if event.anchor is not None:
            raise NotPlain
        text = event.value
        tag = self._tag(event)
        if tag == _MERGE:
            raise NotPlain  # a '<<' merge
        if tag == _STR:
            return text
        key, problem = scalar_value(tag, text)
        if problem is None and not isinstance(key, str):
            problem, key = _key_problem(text, key), text
        if problem is not None:
            mark = event.start_mark
            self.problems.append(Problem(path, mark.line + 1, mark.column + 1, problem))
        return key

    def _duplicate(self, mark: Any, key: Any, first: int, path: tuple[str | int, ...]) -> None:
        first_line = (first >> 32) + 1
        self.problems.append(
            Problem(
                path,
                mark.line + 1,
                mark.column + 1,
                f"duplicate key {str(key)!r} (first at line {first_line}); "
                "YAML would silently keep only the last one: remove one",
            )
        )

    def _skip(self, event: Any, depth: int) -> None:
        """Consume a value that is not kept (a duplicate key's): no problems, no positions."""
        if event.anchor is not None:
            raise NotPlain  # an alias elsewhere may name it
        if type(event) is _Scalar:
            return
        if depth > MAX_DEPTH:
            raise NotPlain
        get = self._next
        while True:
            inner = get()
            if type(inner) in (_MappingEnd, _SequenceEnd):
                return
            if isinstance(inner, yaml.AliasEvent):
                raise NotPlain
            self._skip(inner, depth + 1)

    def _sequence(self, start: Any, path: tuple[str | int, ...], depth: int) -> list[Any]:
        result: list[Any] = []
        items: list[int] = []
        get = self._next
        while True:
            event = get()
            if type(event) is _SequenceEnd:
                break
            mark = event.start_mark
            items.append(pack(mark.line, mark.column))
            result.append(self._value(event, path, result, len(result), depth))
        mark = start.start_mark
        self.positions.add(result, pack(mark.line, mark.column), items)
        return result
