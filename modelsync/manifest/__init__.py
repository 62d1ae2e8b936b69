"""The manifest: ``load_manifest(path) -> Manifest`` and the schema it is checked against.

The pipeline is in :mod:`.load`; :mod:`.schemafile` holds the shipped JSON Schema,
:mod:`.fastcheck` the fast path that spares a valid manifest jsonschema,
:mod:`.messages` the wording of every problem, :mod:`.checks` what the schema cannot say
and the ``${VAR}`` interpolation.
"""

from __future__ import annotations

from modelsync.manifest.checks import INTERPOLATED_FIELDS
from modelsync.manifest.load import Manifest, load_manifest
from modelsync.manifest.schemafile import schema, schema_text

__all__ = ["INTERPOLATED_FIELDS", "Manifest", "load_manifest", "schema", "schema_text"]
