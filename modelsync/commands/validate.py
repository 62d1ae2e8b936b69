"""``modelsync validate``: check manifests, collecting every problem."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from modelsync.errors import ManifestError
from modelsync.manifest import Manifest, load_manifest


@dataclass(frozen=True)
class Checked:
    """One manifest's verdict: the manifest when valid, the error (every problem) when not."""

    path: str
    manifest: Manifest | None
    error: ManifestError | None


def validate(
    paths: Sequence[str], env: Mapping[str, str] | None = None, *, strict: bool = False
) -> Iterator[Checked]:
    """Load each manifest in turn; yield its result as soon as it is known.

    ``strict`` (``--strict``): warnings are errors, and make a manifest invalid.
    """
    env = os.environ if env is None else env
    for path in paths:
        try:
            yield Checked(path, load_manifest(path, env, strict=strict), None)
        except ManifestError as exc:
            yield Checked(path, None, exc)
