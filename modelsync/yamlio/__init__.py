"""The one strict, safe YAML loader (DESIGN §1, steps 1 and 2).

PyYAML composes the document into a node graph (libyaml's C parser when it is
there: it is several times faster and keeps line numbers); this package then builds
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

:mod:`.load` reads the file and runs the steps, :mod:`.compose` parses (and words
PyYAML's errors), :mod:`.build` makes the values, :mod:`.document` is what they return.
"""

from __future__ import annotations

from modelsync.yamlio.document import (
    ALIAS_EXPANSION_LIMIT,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    LoadedYaml,
    Position,
    Problem,
    YamlDate,
    describe_yaml_type,
)
from modelsync.yamlio.load import load_yaml_file, load_yaml_text, read_text

__all__ = [
    "ALIAS_EXPANSION_LIMIT",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "LoadedYaml",
    "Position",
    "Problem",
    "YamlDate",
    "describe_yaml_type",
    "load_yaml_file",
    "load_yaml_text",
    "read_text",
]
