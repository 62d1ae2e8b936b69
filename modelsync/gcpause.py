"""One helper: the cyclic garbage collector paused while a command builds large, acyclic data.

Loading a 10,000-model manifest builds ~200,000 objects (values, records), reading its state
as many again, and planning compares them: all stay alive until the command ends, and none
forms a garbage cycle. Each pass of the collector walks all of them again, which doubled
the time of ``validate`` and ``plan`` (DESIGN §7). Reference counting frees everything as
usual meanwhile; code that makes cycles under a pause must break them itself
(``manifest.load._unlink``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (nestable; as a decorator, for each call)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:  # only the outermost pause turns it back on
            gc.enable()
