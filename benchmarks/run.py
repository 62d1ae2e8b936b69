"""The scenarios of DESIGN §7, each run as whole processes, and the document they make.

    python -m benchmarks [--repeat N] [--quick] [--only GROUP...] [--output PATH]

Every timed scenario is a fresh process (``python -m modelsync ...`` or a reference
beside it), against a sandbox running as its own process. Wall time is taken around the
child; peak memory and CPU time are the child's own, from ``os.wait4``. The scenarios
live in :mod:`benchmarks.scenarios_apply` and :mod:`benchmarks.scenarios_plan`, the
document in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import report, scenarios_apply, scenarios_plan
from benchmarks.bench import FULL, QUICK, ROOT, Bench, Failure, Row
from benchmarks.proc import modelsync

DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
GROUPS = ("startup", "apply", "plan", "phases", "errors")
_ORDER = ("1", "2", "3", "4", "4b", "4c", "5", "6", "7", "8", "9")


def _run_groups(bench: Bench, groups: Sequence[str]) -> tuple[list[Row], str]:
    """Run the chosen groups of scenarios, in an order where each finds what it needs."""
    rows: list[Row] = []
    tables = "(not run)"
    bench.warm_up()
    if {"phases", "errors"} & set(groups):
        # Before anything long: the largest manifest must be one modelsync accepts.
        largest = max(*bench.sizes.phases, bench.sizes.broken)
        bench.echo(f"preflight: validate the {largest:,}-model manifest")
        bench.run(modelsync("validate", str(bench.manifest(largest))), "preflight")
    steps: list[tuple[str, str, Callable[[], None]]] = []

    def add(group: str, title: str, step: Callable[[], list[Row]]) -> None:
        steps.append((group, title, lambda: rows.extend(step())))

    add("startup", "scenario 7: start-up", lambda: scenarios_plan.startup(bench))
    add(
        "apply",
        "scenarios 1, 2, 6: apply against the reference client, the loop, with faults",
        lambda: scenarios_apply.apply_against_references(bench),
    )
    add("plan", "scenario 3: second apply", lambda: scenarios_apply.noop_apply(bench))
    add(
        "plan",
        "scenario 4: validate and plan against the stock YAML load",
        lambda: [*scenarios_plan.validate_plan(bench), scenarios_plan.alias_bomb(bench)],
    )
    if "apply" in groups:
        add(
            "plan",
            "scenario 5: state bytes per result",
            lambda: scenarios_apply.journal_cost(bench),
        )

    def linearity() -> list[Row]:
        nonlocal tables
        measured = scenarios_plan.phases(bench)
        tables = scenarios_plan.phase_tables(measured)
        return scenarios_plan.linearity_rows(bench, measured)

    add("phases", "scenario 8: linearity per phase", linearity)
    add("errors", "scenario 9: a manifest of errors", lambda: scenarios_plan.misspelt(bench))
    for group, title, step in steps:
        if group in groups:
            bench.echo(title)
            step()
    rows.sort(key=lambda r: _ORDER.index(r.number) if r.number in _ORDER else len(_ORDER))
    return rows, tables


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, print the document, write it (docs/benchmarks.md by default)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeat", type=int, default=FULL.repeat, help="runs per scenario")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run for CI: every scenario at tiny sizes, once; fails only if a child "
        "fails or a count is wrong, never on times; writes nothing unless --output",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=GROUPS,
        default=list(GROUPS),
        help="run only these groups (a partial document; 'plan' needs 'apply' for scenario 5)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the report (default {DEFAULT_OUTPUT.relative_to(ROOT)}, "
        "none with --quick or --only)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK if args.quick else dataclasses.replace(FULL, repeat=args.repeat)
    partial = set(args.only) != set(GROUPS)
    output = args.output
    if output is None and not (args.quick or partial):
        output = DEFAULT_OUTPUT
    command = "python -m benchmarks" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()

    def echo(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    load_start = report.load_average()
    clock = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="modelsync-bench-"))
    bench = Bench(workdir, sizes, echo=echo)
    try:
        rows, tables = _run_groups(bench, args.only)
    except Failure as exc:
        echo(f"benchmark failed: {exc}\n(logs kept in {workdir})")
        return 1
    finally:
        bench.close()
    if args.keep:
        echo(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    context = report.Context(
        command=command,
        info=report.machine(),
        started=started,
        elapsed=time.perf_counter() - clock,
        loads=(load_start, report.load_average()),
        sizes=sizes,
    )
    document = report.render_document(rows, bench.ratios, bench.notes, tables, context)
    print(document)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document, encoding="utf-8")
        echo(f"wrote {output}")
    echo(f"done in {context.elapsed:.0f} s")
    if args.quick:
        return 0 if all(r.check is not False for r in rows) else 1
    return 0 if all(r.ok is not False for r in rows) else 1
