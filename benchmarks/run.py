"""The scenarios of DESIGN §7, each run as whole processes, and the table they make.

    python -m benchmarks [--repeat N] [--quick] [--output PATH]

Every timed scenario is a fresh ``python -m modelsync ...`` process (start-up included, as
a user or a CI job pays it), against a sandbox running as its own process. Wall time is
taken around the child; peak memory is the child's own ``ru_maxrss`` from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import gen
from benchmarks.proc import PYTHON, SANDBOX_KEY, Run, SandboxProcess, modelsync, run

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
LATENCY_MS = 50.0
PARALLELISM = 8
HEAVY_IMPORTS = ("requests", "jsonschema", "yaml", "urllib3")


@dataclass
class Row:
    """One line of the table."""

    number: str
    scenario: str
    values: list[float]
    unit: str  # "s", "B", "µs", "req"
    target: str
    verdict: str
    ok: bool | None  # None: information, no target
    rss_mb: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Sizes:
    small: int
    large: int
    repeat: int


class Failure(RuntimeError):
    """A benchmark child failed in a way that makes its numbers meaningless."""


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.0f} ms"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "µs":
        return f"{value:,.0f} µs"
    return f"{value:,.0f}"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Bench:
    """Runs the scenarios in one temporary folder."""

    def __init__(self, workdir: Path, sizes: Sizes, *, echo: Callable[[str], None]) -> None:
        self.dir = workdir
        self.sizes = sizes
        self.echo = echo
        self.logs = workdir / "logs"
        self.env = _child_env(workdir / "pycache")
        self.small_manifest = workdir / f"models-{sizes.small}.yaml"
        self.large_manifest = workdir / f"models-{sizes.large}.yaml"
        self.small_ids = gen.write_manifest(self.small_manifest, sizes.small)
        gen.write_manifest(self.large_manifest, sizes.large)
        self.alias_bomb = workdir / "alias-bomb.yaml"
        gen.write_alias_bomb(self.alias_bomb)
        self.small_state: tuple[Path, str] | None = None  # (state path, endpoint)
        self.large_state: tuple[Path, str] | None = None
        self.notes: list[str] = []
        self._count = 0

    def warm_up(self) -> None:
        """Compile every module once, as installing the package would."""
        modules = (
            "modelsync.cli, modelsync.commands.apply, modelsync.runner, modelsync.api.modelslab, "
            "modelsync.sandbox, jsonschema, requests, yaml"
        )
        self._run([PYTHON, "-c", f"import {modules}"], "warm-up")

    # -- helpers

    def _run(self, args: Sequence[str], name: str, *, expect: Sequence[int] = (0,)) -> Run:
        self._count += 1
        result = run(
            args, env=self.env, logs=self.logs, name=f"{self._count:03d}-{name}", cwd=self.dir
        )
        if result.returncode not in expect:
            raise Failure(
                f"{name}: exit {result.returncode} (expected {'/'.join(map(str, expect))}):\n"
                f"{shlex.join(args)}\n{result.tail()}"
            )
        return result

    def _apply(
        self, manifest: Path, sandbox: SandboxProcess, state: Path, report: Path, name: str
    ) -> tuple[Run, dict[str, int]]:
        result = self._run(
            modelsync(
                "apply",
                str(manifest),
                "--endpoint",
                sandbox.load_model_url,
                "--state",
                str(state),
                "--parallelism",
                str(PARALLELISM),
                "--report",
                str(report),
            ),
            name,
            expect=(0, 1),
        )
        summary = json.loads(report.read_text("utf-8"))["summary"]
        return result, summary

    def _fresh(self, name: str) -> Path:
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    # -- scenarios

    def startup(self) -> list[Row]:
        """Scenario 7: `--version` and `--help` start-up, and what they import."""
        repeat = max(self.sizes.repeat, 5)
        rows = []
        floor = [self._run([PYTHON, "-c", "pass"], "python-c-pass").seconds for _ in range(repeat)]
        rows.append(Row("7", "`python -c pass` (the interpreter alone)", floor, "s", "", "", None))
        for flag in ("--version", "--help"):
            runs = [self._run(modelsync(flag), f"startup{flag}") for _ in range(repeat)]
            heavy = self._heavy_imports(flag)
            rows.append(
                Row(
                    "7",
                    f"`modelsync {flag}`",
                    [r.seconds for r in runs],
                    "s",
                    "≤ 0.30 s; imports none of " + "/".join(HEAVY_IMPORTS[:3]),
                    "imports: " + (", ".join(heavy) if heavy else "none of them"),
                    _median([r.seconds for r in runs]) <= 0.30 and not heavy,
                    [r.max_rss_mb for r in runs],
                )
            )
        return rows

    def _heavy_imports(self, flag: str) -> list[str]:
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-m", "modelsync", flag],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        found = set()
        for line in done.stderr.splitlines():
            name = line.rsplit("|", 1)[-1].strip()
            top = name.split(".", 1)[0]
            if top in HEAVY_IMPORTS:
                found.add(top)
        return sorted(found)

    def alias_bomb_row(self) -> Row:
        """The 9-level "billion laughs" manifest: rejected (exit 3), fast."""
        runs = [
            self._run(modelsync("validate", str(self.alias_bomb)), "alias-bomb", expect=(3,))
            for _ in range(self.sizes.repeat)
        ]
        seconds = [r.seconds for r in runs]
        return Row(
            "4b",
            "validate a 9-level alias bomb (9⁹ leaves from 300 bytes)",
            seconds,
            "s",
            "rejected (exit 3), ≤ 1 s",
            "rejected, exit 3",
            _median(seconds) <= 1.0,
            [r.max_rss_mb for r in runs],
        )

    def apply_baseline_faults(self) -> list[Row]:
        """Scenarios 1, 2 and 6, interleaved per repeat so drift hits them alike."""
        n = self.sizes.small
        ideal = n * LATENCY_MS / 1000.0 / PARALLELISM
        s1: list[Run] = []
        s2: list[Run] = []
        s6: list[Run] = []
        s6_listed: list[int] = []
        s6_ready: list[int] = []
        s6_outcomes: list[str] = []
        s1_requests: list[int] = []
        for r in range(self.sizes.repeat):
            self.echo(f"  repeat {r + 1}/{self.sizes.repeat}: apply {n:,} creates")
            folder = self._fresh(f"s1-{r}")
            with SandboxProcess(folder, latency_ms=LATENCY_MS, seed=r, env=self.env) as sandbox:
                state = folder / "state.json"
                result, summary = self._apply(
                    self.small_manifest, sandbox, state, folder / "report.json", "s1-apply"
                )
                if result.returncode != 0 or summary["submitted"] != n:
                    raise Failure(f"scenario 1: not every model submitted: {summary}")
                s1.append(result)
                s1_requests.append(sandbox.requests_received())
                self.small_state = (state, sandbox.load_model_url)

            self.echo(f"  repeat {r + 1}/{self.sizes.repeat}: sequential requests.post loop")
            folder = self._fresh(f"s2-{r}")
            with SandboxProcess(folder, latency_ms=LATENCY_MS, seed=r, env=self.env) as sandbox:
                baseline = ROOT / "benchmarks" / "baseline.py"
                s2.append(
                    self._run(
                        [PYTHON, str(baseline), str(self.small_manifest), sandbox.load_model_url],
                        "s2-baseline",
                    )
                )

            self.echo(f"  repeat {r + 1}/{self.sizes.repeat}: apply {n:,} creates with faults")
            folder = self._fresh(f"s6-{r}")
            with SandboxProcess(
                folder,
                latency_ms=LATENCY_MS,
                fail_rate=0.1,
                reset_rate=0.05,
                seed=100 + r,
                env=self.env,
            ) as sandbox:
                result, summary = self._apply(
                    self.small_manifest,
                    sandbox,
                    folder / "state.json",
                    folder / "report.json",
                    "s6-apply-faults",
                )
                s6.append(result)
                wanted = set(self.small_ids)
                listing = sandbox.model_list()
                held = [m for m in listing if m.get("model_id") in wanted]
                s6_listed.append(len(held))
                s6_ready.append(sum(1 for m in held if m.get("status") == "model_ready"))
                stats = _outcomes(sandbox)
                outcome = (
                    f"exit {result.returncode}, {summary['submitted']} submitted / "
                    f"{summary['failed']} failed; sandbox: {stats.get('fault_5xx', 0)} 5xx, "
                    f"{stats.get('reset', 0)} resets, {stats.get('already_exists', 0)} "
                    "'already exists'"
                )
                if summary["failed"]:
                    # Not timed: what a user does next, the next apply retries what failed.
                    again, summary = self._apply(
                        self.small_manifest,
                        sandbox,
                        folder / "state.json",
                        folder / "report-again.json",
                        "s6-apply-again",
                    )
                    outcome += (
                        f"; the next apply: exit {again.returncode}, "
                        f"{summary['submitted']} submitted, {summary['unchanged']} unchanged"
                    )
                s6_outcomes.append(outcome)

        t1 = _median([x.seconds for x in s1])
        t2 = _median([x.seconds for x in s2])
        t6 = _median([x.seconds for x in s6])
        rows = [
            Row(
                "1",
                f"apply {n:,} creates, latency {LATENCY_MS:g} ms, --parallelism {PARALLELISM}",
                [x.seconds for x in s1],
                "s",
                f"≤ 1.2 × ideal {ideal:.2f} s = {1.2 * ideal:.2f} s",
                f"{t1 / ideal:.2f} × ideal; {_median(s1_requests):,.0f} requests",
                t1 <= 1.2 * ideal,
                [x.max_rss_mb for x in s1],
            ),
            Row(
                "2",
                f"the same {n:,} posted by a sequential `requests.post` loop",
                [x.seconds for x in s2],
                "s",
                "scenario 1 ≥ 6 × faster",
                f"scenario 1 is {t2 / t1:.1f} × faster",
                t2 / t1 >= 6.0,
                [x.max_rss_mb for x in s2],
            ),
            Row(
                "6",
                f"apply {n:,} creates, --fail-rate 0.1 --reset-rate 0.05",
                [x.seconds for x in s6],
                "s",
                f"≤ 2 × scenario 1 ({2 * t1:.2f} s); every model loaded",
                f"{t6 / t1:.2f} × scenario 1; model_list holds "
                f"{min(s6_listed):,}/{n:,} (ready: {min(s6_ready):,})",
                t6 <= 2 * t1 and min(s6_listed) == n,
                [x.max_rss_mb for x in s6],
            ),
        ]
        self.notes.append(
            "Scenario 6, per run: " + "; ".join(f"({i + 1}) {o}" for i, o in enumerate(s6_outcomes))
        )
        return rows

    def noop_validate_plan(self) -> list[Row]:
        """Scenarios 3 and 4: a second apply with nothing to do; validate and plan."""
        n = self.sizes.large
        rows = []
        folder = self._fresh("s3")
        # The first apply only builds the state; the sandbox answers at once so it is quick.
        with SandboxProcess(folder, latency_ms=0, seed=7, env=self.env) as sandbox:
            state = folder / "state.json"
            self.echo(f"  setup: first apply of {n:,} creates (latency 0)")
            first, summary = self._apply(
                self.large_manifest, sandbox, state, folder / "report-0.json", "s3-setup"
            )
            if first.returncode != 0 or summary["submitted"] != n:
                raise Failure(f"scenario 3 setup: not every model submitted: {summary}")
            self.notes.append(
                f"Scenario 3 setup (not a target): the first apply of {n:,} creates against "
                f"a sandbox with latency 0 took {first.seconds:.2f} s, peak "
                f"{first.max_rss_mb:.0f} MB ({n / first.seconds:,.0f} models/s)."
            )
            before = sandbox.requests_received()
            runs = []
            for r in range(self.sizes.repeat):
                result, summary = self._apply(
                    self.large_manifest, sandbox, state, folder / f"report-{r + 1}.json", "s3"
                )
                if result.returncode != 0 or summary["unchanged"] != n:
                    raise Failure(f"scenario 3: expected {n} unchanged: {summary}")
                runs.append(result)
            received = sandbox.requests_received() - before
            self.large_state = (state, sandbox.load_model_url)
        rows.append(
            Row(
                "3",
                f"second apply, nothing to do, {n:,} models",
                [r.seconds for r in runs],
                "s",
                "0 requests",
                f"{received} requests in {len(runs)} runs",
                received == 0,
                [r.max_rss_mb for r in runs],
            )
        )

        endpoint = self.large_state[1]
        cases: list[tuple[str, list[str], float]] = [
            ("validate", ["validate", str(self.large_manifest)], 3.0),
            (
                "plan, no state yet",
                [
                    "plan",
                    str(self.large_manifest),
                    "--endpoint",
                    endpoint,
                    "--state",
                    str(folder / "missing.state.json"),
                ],
                3.0,
            ),
            (
                f"plan against a state of all {n:,}",
                ["plan", str(self.large_manifest), "--endpoint", endpoint, "--state", str(state)],
                3.5,
            ),
        ]
        for label, argv, limit in cases:
            runs = [self._run(modelsync(*argv), "s4") for _ in range(self.sizes.repeat)]
            seconds = [r.seconds for r in runs]
            rss = [r.max_rss_mb for r in runs]
            rows.append(
                Row(
                    "4",
                    f"{label}, {n:,} models",
                    seconds,
                    "s",
                    f"≤ {limit:g} s, ≤ 200 MB",
                    f"peak {max(rss):.0f} MB",
                    _median(seconds) <= limit and max(rss) <= 200,
                    rss,
                )
            )
        return rows

    def journal_cost(self) -> list[Row]:
        """Scenario 5: bytes the state writes per recorded result, on 1k- and 10k-model states."""
        from modelsync.store.file import StateStore

        rows = []
        per_result: dict[int, float] = {}
        states = ((self.sizes.small, self.small_state), (self.sizes.large, self.large_state))
        for size, pair in states:
            assert pair is not None
            source, endpoint = pair
            folder = self._fresh(f"s5-{size}")
            path = folder / "state.json"
            shutil.copyfile(source, path)
            records = 200
            sizes: list[int] = []
            times: list[float] = []
            journal = folder / "state.json.journal"
            with StateStore(path, endpoint) as store:
                models = store.state.models
                ids = list(models)[:records]
                for model_id in ids:
                    old = models[model_id]
                    new = dataclasses.replace(old, attempts=old.attempts + 1)
                    start = time.perf_counter()
                    store.record(model_id, new)
                    times.append(time.perf_counter() - start)
                    sizes.append(journal.stat().st_size)
            snapshot = path.stat().st_size
            per = (sizes[-1] - sizes[0]) / (len(sizes) - 1)
            per_result[size] = per
            rows.append(
                Row(
                    "5",
                    f"state bytes written per recorded result, {size:,}-model state",
                    [per],
                    "B",
                    "does not grow with N",
                    f"record() {_median(times) * 1e6:,.0f} µs median; one "
                    f"{snapshot / 1024:,.0f} KiB snapshot per run",
                    None,
                )
            )
        small, large = per_result[self.sizes.small], per_result[self.sizes.large]
        growth = large / small
        rows[-1].ok = growth <= 1.05
        rows[-1].verdict += f"; {growth:.2f} × the {self.sizes.small:,}-model figure"
        return rows


def _outcomes(sandbox: SandboxProcess) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(sandbox.request_log, "rb") as handle:
        for line in handle:
            outcome = json.loads(line).get("outcome", "?")
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _child_env(pycache: Path | None = None) -> dict[str, str]:
    dropped = ("PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_") and k not in dropped
    }
    if pycache is not None:
        # An installed modelsync has its bytecode compiled (pip does it); a checkout run with
        # PYTHONDONTWRITEBYTECODE would compile every module at every start instead. The
        # cache goes to the temporary folder, not into the source tree.
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["MODELSYNC_API_KEY"] = SANDBOX_KEY
    env[gen.TOKEN_VAR] = gen.TOKEN_VALUE
    env["NO_COLOR"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "revision": revision,
    }


def render_table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| # | scenario | median | min | max | peak RSS | target | result | |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        mark = {True: "✅", False: "❌", None: ""}[row.ok]
        rss = f"{_median(row.rss_mb):.0f} MB" if row.rss_mb else ""
        many = len(row.values) > 1
        lines.append(
            f"| {row.number} | {row.scenario} | {_fmt(_median(row.values), row.unit)} | "
            f"{_fmt(min(row.values), row.unit) if many else ''} | "
            f"{_fmt(max(row.values), row.unit) if many else ''} | {rss} | {row.target} | "
            f"{row.verdict} | {mark} |"
        )
    return "\n".join(lines)


def render_document(
    rows: Sequence[Row],
    notes: Sequence[str],
    *,
    command: str,
    info: dict[str, str],
    started: datetime.datetime,
    elapsed: float,
    loads: tuple[str, str],
    sizes: Sizes,
    quick: bool,
) -> str:
    """docs/benchmarks.md."""
    met = all(r.ok is not False for r in rows)
    if quick:
        verdict = (
            "A smoke run (`--quick`): smaller sizes, one run each; the targets are for the "
            "full sizes, so the marks above only show the direction."
        )
    elif met:
        verdict = "All targets met."
    else:
        verdict = "**Some targets were not met** (❌ above)."
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks`; do not edit by hand, run it again. -->",
        "",
        "The performance targets of DESIGN §7, measured as a user meets them: every timed",
        "scenario is a whole `python -m modelsync ...` process (interpreter start-up included)",
        "against the API sandbox running as a separate process "
        "(`python -m modelsync sandbox --latency 50 ...`).",
        f"Each is run {sizes.repeat} times ({max(sizes.repeat, 5)} for start-up): median, min "
        "and max wall time; peak RSS is the child's own `ru_maxrss` (from `os.wait4`).",
        "",
        "```console",
        f"$ {command}",
        "```",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, {elapsed / 60:.1f} min",
        f"- machine: {info['cpus']} CPUs, {info['cpu']}, {info['os']}",
        f"- load average (1 min) at start / end: {loads[0]} / {loads[1]}",
        f"- Python {info['python']}; modelsync at `{info['revision']}`",
        "",
        render_table(rows),
        "",
        verdict,
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in notes],
        "- Scenario 1's ideal is N × latency / parallelism: the sandbox sleeps 50 ms per "
        "load_model answer, and at most 8 requests are in flight.",
        "- Scenario 2 is the script a user writes instead: `benchmarks/baseline.py`, "
        "`yaml.safe_load` and one `requests.post` per model, no state, no retries.",
        "- Scenario 3 counts the lines of the sandbox's `--request-log` before and after "
        "the repeated applies.",
        "- Scenario 5 records 200 results through `StateStore.record` in-process, on copies "
        "of the states the applies of scenarios 1 and 3 wrote, and measures how much the "
        "journal grows per result; the snapshot is rewritten once per run, at the end.",
        "- Scenario 6 checks the sandbox's `model_list` (POST /api/v4/dreambooth/model_list) "
        "after the run (`ready`: past the sandbox's 2 s `loading` time). A reset loads the "
        "model and drops the answer. With 15% of answers faulty and `--max-attempts 5`, a "
        "model fails 5 times in a row with probability 0.15⁵: about one 1,000-model run in "
        "13 ends with one failed model (exit 1), which the next apply retries.",
        "- The sandbox of scenario 3 answers at once (latency 0): it only has to count "
        "requests, and the first apply that builds the 10,000-model state is then quick.",
        "- Children run with their bytecode cached (`PYTHONPYCACHEPREFIX` in the temporary "
        "folder, after one warm-up import), as an installed package has it; the checkout "
        "this ran from may set `PYTHONDONTWRITEBYTECODE`.",
        "",
    ]
    return "\n".join(parts)


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario, print the table, write docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repeat, 200 and 2,000 models; writes no docs unless --output",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the report (default {DEFAULT_OUTPUT.relative_to(ROOT)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = Sizes(200, 2000, 1) if args.quick else Sizes(1000, 10000, args.repeat)
    output = args.output if args.output is not None else (None if args.quick else DEFAULT_OUTPUT)
    command = "python -m benchmarks" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()

    def echo(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC)
    load_start = _load()
    clock = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="modelsync-bench-"))
    try:
        bench = Bench(workdir, sizes, echo=echo)
        rows: list[Row] = []
        bench.warm_up()
        echo("scenario 7: start-up")
        rows += bench.startup()
        echo("scenarios 1, 2, 6: apply, baseline, apply with faults")
        rows += bench.apply_baseline_faults()
        echo("scenarios 3, 4: second apply, validate, plan")
        rows += bench.noop_validate_plan()
        rows.append(bench.alias_bomb_row())
        echo("scenario 5: state bytes per result")
        rows += bench.journal_cost()
    except Failure as exc:
        echo(f"benchmark failed: {exc}\n(logs kept in {workdir})")
        return 1
    if args.keep:
        echo(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    order = {"1": 0, "2": 1, "3": 2, "4": 3, "4b": 4, "5": 5, "6": 6, "7": 7}
    rows.sort(key=lambda r: order.get(r.number, 99))
    elapsed = time.perf_counter() - clock
    document = render_document(
        rows,
        bench.notes,
        command=command,
        info=machine(),
        started=started,
        elapsed=elapsed,
        loads=(load_start, _load()),
        sizes=sizes,
        quick=args.quick,
    )
    print(document)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document, encoding="utf-8")
        echo(f"wrote {output}")
    return 0 if args.quick or all(r.ok is not False for r in rows) else 1
