"""Steps 1 and 2: a manifest file -> :class:`LoadedYaml`, strictly and safely."""

from __future__ import annotations

from pathlib import Path

from modelsync.errors import Diagnostic, ManifestError
from modelsync.yamlio.build import _Builder, _TooDeep
from modelsync.yamlio.compose import _check_graph, _compose, _Loader, parse_errors
from modelsync.yamlio.document import _TOO_DEEP, MAX_FILE_BYTES, LoadedYaml, _error_at
from modelsync.yamlio.events import EventBuilder, NotPlain
from modelsync.yamlio.positions import pack


def read_text(path: Path) -> str:
    """Step 1: the file exists, is regular, at most 64 MiB, UTF-8 text, not empty."""
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
            f"the file is {st.st_size} bytes, more than the 64 MiB a manifest may be; "
            "split it into several manifests"
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise fail("the file is larger than the 64 MiB a manifest may be; split it")
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
    loader = _Loader(text)
    try:
        with parse_errors(text, name):
            events = EventBuilder(loader)
            data = events.document()
        return LoadedYaml(name, data, events.positions, tuple(events.problems))
    except NotPlain:
        pass  # anchors, merges...: the node graph handles all of YAML
    finally:
        loader.dispose()
    return _load_graph(text, name)


def _load_graph(text: str, name: str) -> LoadedYaml:
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
    positions = builder.positions
    positions.root = positions.own(data) or pack(root.start_mark.line, root.start_mark.column)
    return LoadedYaml(name, data, positions, tuple(builder.problems))
