"""The plan as Markdown, for a pull-request comment or a job summary (DESIGN §9).

A hidden marker comes first, so that a bot finds and updates one sticky comment; the
summary line follows, then a table of what apply would do. GitHub refuses comments over
65,536 characters: the text is cut at a row boundary to stay within :data:`MAX_CHARS`,
with a line saying how many rows were left out.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from modelsync.redact import redact

if TYPE_CHECKING:
    from modelsync.plan import Change, Plan

MAX_CHARS = 60_000
HEADER = "| | model | action | force_load | changes |\n|---|---|---|---|---|"
NO_CHANGES = "No changes: the account holds what the manifest declares."
# What Markdown (and GitHub's HTML filter) would read as syntax in a table cell.
_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_NOTES = {
    "orphan": "in the state, not in the manifest; nothing is deleted remotely",
    "conflict": "on the account, not put there by modelsync; apply skips it",
}


def marker(manifest: str) -> str:
    """``<!-- modelsync:plan:MANIFEST -->``: the manifest path cannot end the comment."""
    path = urllib.parse.quote(manifest, safe="/:@+,=").replace("--", "-%2D")
    return f"<!-- modelsync:plan:{path} -->"


def escape(text: str) -> str:
    """``text`` as literal Markdown inline text, safe in a table cell."""
    text = "".join(_ENTITIES.get(c, c) for c in text)
    text = _SPECIAL.sub(r"\\\1", text)
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _value(value: Any) -> str:
    shown = "(none)" if value is None else json.dumps(value, ensure_ascii=False)
    return escape(redact(shown))  # masked before escaping changes how a secret is spelled


def _details(change: Change) -> str:
    parts: list[str] = []
    if change.action == "retry" and change.previous is not None:
        reason = change.previous.last_error or f"last run left it {change.previous.status}"
        parts.append("retry: " + escape(redact(reason)))
    if change.action in _NOTES:
        parts.append(_NOTES[change.action])
    for name, diff in change.fields.items():
        parts.append(f"{escape(name)}: {_value(diff.before)} → {_value(diff.after)}")
    return "<br>".join(parts)


def row(change: Change) -> str:
    """One change as a table row."""
    from modelsync.plan import SYMBOLS

    cells = (
        f"`{SYMBOLS[change.action]}`",  # one known character, never a backtick
        escape(redact(change.model_id)),
        change.action,
        escape(change.force_load or "-"),
        _details(change),
    )
    return "| " + " | ".join(cells) + " |"


def left_out_line(count: int, manifest: str) -> str:
    """What a cut plan says about the rows it does not show."""
    rows = "row was" if count == 1 else "rows were"
    return (
        f"**{count} more {rows} left out** to keep this under {MAX_CHARS:,} characters; "
        f"run `modelsync plan {escape(manifest)}` to see the whole plan."
    )


def render_markdown(plan: Plan, *, manifest: str, summary: str, max_chars: int = MAX_CHARS) -> str:
    """The plan in Markdown: marker, title, ``summary`` (the plan's summary line), the
    changes; at most ``max_chars`` characters."""
    head = [
        marker(manifest),
        f"### modelsync plan: {escape(redact(manifest))}",
        "",
        escape(summary),
        "",
    ]
    rows = [row(c) for c in plan.changes if c.action != "unchanged"]
    if not rows:
        return redact("\n".join([*head, NO_CHANGES]))
    full = "\n".join([*head, HEADER, *rows])
    if len(full) <= max_chars:
        return full
    # Cut at a row boundary, leaving room for the line about the cut (widest count).
    room = max_chars - len(left_out_line(len(rows), manifest)) - 2
    kept = [*head, HEADER]
    size = len("\n".join(kept))
    for line in rows:
        if size + 1 + len(line) > room:
            break
        kept.append(line)
        size += 1 + len(line)
    left_out = len(rows) - (len(kept) - len(head) - 1)
    return "\n".join([*kept, "", left_out_line(left_out, manifest)])
