"""The one strict, safe YAML loader (DESIGN §1, steps 1 and 2).

libyaml's C parser (PyYAML's pure-Python one when libyaml is missing) reads the text; this
package builds plain Python values itself, so that it can:

- refuse every tag but the plain safe ones (``!!python/...``, custom tags);
- report a duplicate key in any mapping with both lines (PyYAML keeps the last);
- refuse a document whose aliases would expand it more than 10x ("billion laughs")
  before building anything;
- refuse nesting deeper than 64 levels without a ``RecursionError``;
- keep dates as text (:class:`YamlDate`, so a date where text is expected can be
  reported with "quote it") and remember the source text of every typed scalar;
- answer "where is this value?" for any path, so later steps (schema, checks) can
  name ``file:line:column``.

:mod:`.load` reads the file and runs the steps. :mod:`.events` builds the usual manifest
straight from the parser's events; a document with anchors, aliases, merges or complex
keys goes through PyYAML's node graph instead (:mod:`.compose` parses and words PyYAML's
errors, :mod:`.build` makes the values). Both record positions compactly
(:mod:`.positions`); :mod:`.document` is what they return.
"""

from __future__ import annotations

from modelsync.yamlio.document import (
    ALIAS_EXPANSION_LIMIT,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    LoadedYaml,
    Problem,
    YamlDate,
    describe_yaml_type,
)
from modelsync.yamlio.load import load_yaml_file, load_yaml_text, read_text
from modelsync.yamlio.positions import Position

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
