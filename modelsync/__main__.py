"""``python -m modelsync`` and the ``modelsync`` console script."""

from __future__ import annotations


def entry() -> int:
    """Run the command line and return its exit code."""
    from modelsync.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
