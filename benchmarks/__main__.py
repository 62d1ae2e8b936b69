"""``python -m benchmarks``: run the scenarios, print the table, write docs/benchmarks.md."""

from __future__ import annotations

from benchmarks.run import main

raise SystemExit(main())
