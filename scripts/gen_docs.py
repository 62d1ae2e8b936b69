#!/usr/bin/env python3
"""Generate the reference parts of the docs from their one source of truth.

Each target is a Markdown file: hand-written text above a marker line, generated text
below it. ``python scripts/gen_docs.py`` rewrites the generated parts; with ``--check``
it changes nothing and exits 1 when a file differs from what it would write (CI runs
that, as sqlite-utils does with ``cog --check``).

To add a reference: write a ``render_...() -> str`` function and add a ``Target``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "modelsync" / "schemas" / "manifest.schema.json"
MARKER = "<!-- Generated below by scripts/gen_docs.py"


@dataclass(frozen=True)
class Target:
    """A generated file: where it is (from the repository root), its source, its renderer."""

    path: str
    source: str
    render: Callable[[], str]

    def marker_line(self) -> str:
        return (
            f"{MARKER} from {self.source}: do not edit by hand; "
            "edit the source, then run python scripts/gen_docs.py -->"
        )


# --------------------------------------------------------------------------- manifest


def _load_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _literal(value: Any) -> str:
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _resolve(sub: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = sub.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: Mapping[str, Any] = defs[ref.rsplit("/", 1)[-1]]
        return resolved
    return sub


def _value(sub: Mapping[str, Any], defs: Mapping[str, Any], overridden: bool = False) -> str:
    """What a field holds, in words, from its subschema."""
    sub = _resolve(sub, defs)
    if "const" in sub:
        return _literal(sub["const"])
    if "enum" in sub:
        return ", ".join(_literal(v) for v in sub["enum"])
    if "anyOf" in sub:
        return _alternatives(sub["anyOf"], defs)
    if "allOf" in sub:
        return "; ".join(_value(part, defs) for part in sub["allOf"])
    if "if" in sub:
        return (
            f"when it matches `{sub['if']['pattern']}`: {_value(sub['then'], defs)}; "
            f"otherwise: {_value(sub['else'], defs)}"
        )
    kind = sub.get("type")
    if kind == "array":
        items = sub.get("items", {})
        ref = items.get("$ref", "") if isinstance(items, Mapping) else ""
        return f"list of {ref.rsplit('/', 1)[-1]}s (below)" if ref else "list"
    if kind == "object":
        values = sub.get("additionalProperties")
        if isinstance(values, Mapping):
            text = f"mapping of name to {_value(values, defs)}"
            names = sub.get("propertyNames", {}).get("pattern")
            return text + (f"; names match `{names}`" if names else "")
        return "mapping (below)"
    if kind == "string" or (kind is None and ("pattern" in sub or "not" in sub)):
        parts = ["text"] if kind else []
        low, high = sub.get("minLength"), sub.get("maxLength")
        if low is not None and high is not None:
            parts.append(f"{low}-{high} characters")
        elif high is not None:
            parts.append(f"at most {high} characters")
        elif low is not None:
            parts.append(f"at least {low} characters")
        if "pattern" in sub:
            parts.append(f"matching `{sub['pattern']}`")
        if "not" in sub and "pattern" in sub["not"]:
            parts.append(f"not matching `{sub['not']['pattern']}`")
        if overridden:
            parts.append("form depends on `model_format` (below)")
        return ", ".join(parts)
    return "any"  # pragma: no cover - every field of the schema has a type, enum or const


def _alternatives(branches: Sequence[Mapping[str, Any]], defs: Mapping[str, Any]) -> str:
    """An anyOf of values (the current ones, then the deprecated ones), in words."""
    current = [_value(b, defs) for b in branches if not b.get("deprecated")]
    deprecated = [_value(b, defs) for b in branches if b.get("deprecated")]
    text = ", ".join(current)
    if deprecated:
        text += "; deprecated, accepted with a warning: " + ", ".join(deprecated)
    return text


def _conditional_fields(obj: Mapping[str, Any]) -> set[str]:
    """Fields whose rule an if/then/else adds to."""
    fields: set[str] = set()
    for branch in ("then", "else"):
        fields.update(obj.get(branch, {}).get("properties", {}))
    return fields


def _field_table(obj: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    required = set(obj.get("required", ()))
    conditional = _conditional_fields(obj)
    lines = ["| field | required | value | description |", "|---|---|---|---|"]
    for name, sub in obj.get("properties", {}).items():
        value = _value(sub, defs, overridden=name in conditional)
        description = _resolve(sub, defs).get("description", "")
        lines.append(
            f"| `{name}` | {'yes' if name in required else 'no'} | {_cell(value)} "
            f"| {_cell(description)} |"
        )
    return lines


def _conditional_rules(obj: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    """The if/then/else of an object, as sentences."""
    condition = obj.get("if", {}).get("properties", {})
    if not condition:
        return []
    (field, test), *_ = condition.items()
    when = f"`{field}` is {_literal(test['const'])}" if "const" in test else f"`{field}` matches"
    lines: list[str] = []
    for branch, lead in (("then", f"When {when}"), ("else", "Otherwise")):
        for name, sub in obj.get(branch, {}).get("properties", {}).items():
            target = _resolve(sub, defs)
            description = target.get("description", "")
            if "if" in target:  # a form that depends on the value itself: one line per form
                lines.append(f"- {lead}, `{name}` takes two forms. {description}")
                lines += _value_forms(target, defs)
                continue
            lines.append(f"- {lead}, `{name}` is {_value(target, defs)}. {description}")
    return lines


def _value_forms(sub: Mapping[str, Any], defs: Mapping[str, Any]) -> list[str]:
    """The then/else of a value's own if (a pattern), as sub-items."""
    lines = []
    for branch, lead in (("then", f"matching `{sub['if']['pattern']}`"), ("else", "otherwise")):
        form = _resolve(sub[branch], defs)
        note = form.get("description", "")
        if "deprecationMessage" in form:
            note += f" Accepted with a warning: {form['deprecationMessage']}."
        lines.append(f"  - {lead.capitalize()}: {_value(form, defs)}. {note.strip()}".rstrip())
    return lines


def render_manifest_reference() -> str:
    """The field reference of the manifest, from schemas/manifest.schema.json."""
    schema = _load_schema()
    defs: Mapping[str, Any] = schema.get("$defs", {})
    props: Mapping[str, Any] = schema["properties"]
    out = [
        "## Field reference",
        "",
        f"{schema.get('title', 'The manifest')}. {schema.get('description', '')}",
        "",
        "Unknown keys are errors everywhere. `modelsync schema` prints the schema.",
        "",
        "### Top level",
        "",
        *_field_table(schema, defs),
    ]
    for name in props:
        sub = _resolve(props[name], defs)
        if sub.get("type") == "object" and "properties" in sub:
            out += ["", f"### `{name}`", "", *_field_table(sub, defs)]
    models = _resolve(props["models"], defs)
    model = _resolve(models.get("items", {}), defs)
    out += [
        "",
        "### A model (an item of `models`)",
        "",
        model.get("description", ""),
        "",
        *_field_table(model, defs),
    ]
    rules = _conditional_rules(model, defs)
    if rules:
        out += ["", "### The form of `url`", "", *rules]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- command line


def _text(text: str) -> str:
    """Help text safe in Markdown prose (``<manifest stem>`` is not an HTML tag)."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _help_markdown(help_text: str) -> list[str]:
    """A click docstring as Markdown: paragraphs rejoined, ``\\b`` blocks kept line by line,
    their indented lines (the examples) as shell code blocks."""
    import inspect

    out: list[str] = []
    for paragraph in inspect.cleandoc(help_text).split("\n\n"):
        lines = paragraph.splitlines()
        if lines and lines[0].strip() == "\b":
            code: list[str] = []
            for line in [*lines[1:], ""]:
                if line.startswith(" ") and line.strip():
                    code.append(line)
                    continue
                if code:
                    indent = min(len(c) - len(c.lstrip()) for c in code)
                    out += ["```sh", *(c[indent:] for c in code), "```", ""]
                    code = []
                if line.strip():
                    out += [_text(line.strip()), ""]
        else:
            out += [_text(" ".join(line.strip() for line in lines)), ""]
    return out


def _option_row(option: Any, ctx: Any) -> str:
    import click

    names = click.formatting.join_options([*option.opts, *option.secondary_opts])[0]
    extra = option.get_help_extra(ctx)
    if option.count:
        value = "flag, repeatable"
    elif option.is_flag:
        value = "flag"
    elif isinstance(option.type, click.Choice):
        value = " \\| ".join(f"`{choice}`" for choice in option.type.choices)
    else:
        value = f"`{option.make_metavar(ctx).removesuffix(' RANGE')}`"
        if "range" in extra:
            value += f" ({extra['range']})"
    if option.multiple:
        value += ", repeatable"
    default = f"`{extra['default']}`" if "default" in extra else ""
    if extra.get("required"):
        default = "required"
    return f"| `{names}` | {value} | {default} | {_cell(_text(option.help or ''))} |"


def _command_section(command: Any, ctx: Any, level: int) -> list[str]:
    import click

    path = ctx.command_path
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    out = [f"{'#' * level} `{path}`", "", "```text", f"Usage: {usage}", "```", ""]
    out += _help_markdown(command.help or "")
    options = [
        p
        for p in command.get_params(ctx)
        if isinstance(p, click.Option) and not p.hidden and "--help" not in p.opts
    ]
    if options:
        out += ["| option | value | default | description |", "|---|---|---|---|"]
        out += [_option_row(option, ctx) for option in options]
        out.append("")
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            if sub.hidden:
                continue
            sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
            out += _command_section(sub, sub_ctx, level + 1)
    return out


def _command_index(command: Any, prefix: str) -> list[str]:
    import click

    out: list[str] = []
    for name, sub in command.commands.items():
        if sub.hidden:
            continue
        path = f"{prefix} {name}"
        anchor = path.replace(" ", "-")
        out.append(f"- [`{path}`](#{anchor}): {_text(sub.get_short_help_str(limit=200))}")
        if isinstance(sub, click.Group):
            out += ["  " + line for line in _command_index(sub, path)]
    return out


def render_cli_reference() -> str:
    """The reference of every command and option, from the click command tree itself."""
    if str(REPO) not in sys.path:  # run as a script without the package installed
        sys.path.insert(0, str(REPO))
    from modelsync.cli import cli

    # resilient_parsing: build every context without requiring arguments or running anything.
    ctx = cli.make_context("modelsync", [], resilient_parsing=True)
    out = [
        "## Command reference",
        "",
        "Every command also takes `-h`/`--help`. The global options go before the command:",
        "`modelsync --log-format json apply ...`.",
        "",
        *_command_index(cli, "modelsync"),
        "",
        *_command_section(cli, ctx, 3),
    ]
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- targets

TARGETS: tuple[Target, ...] = (
    Target("docs/manifest.md", "modelsync/schemas/manifest.schema.json", render_manifest_reference),
    Target("docs/cli.md", "modelsync/cli.py", render_cli_reference),
)


class DocsError(Exception):
    """A generated file cannot be updated (no marker line, missing file)."""


def expected_text(current: str, target: Target) -> str:
    """``current`` with everything below the marker line replaced by the generated text."""
    lines = current.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(MARKER):
            head = "".join(lines[:index])
            return f"{head}{target.marker_line()}\n\n{target.render()}"
    raise DocsError(f"{target.path}: no marker line starting with {MARKER!r}; add it")


def main(argv: Sequence[str] | None = None, root: Path = REPO) -> int:
    """Update (or ``--check``) every generated file; 1 when a check finds drift."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    status = 0
    for target in TARGETS:
        path = root / target.path
        try:
            current = path.read_text(encoding="utf-8")
            wanted = expected_text(current, target)
        except (OSError, DocsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if current == wanted:
            continue
        if args.check:
            print(
                f"{target.path} is out of date with {target.source}: "
                "run python scripts/gen_docs.py and commit the result",
                file=sys.stderr,
            )
            status = 1
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"updated {target.path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
