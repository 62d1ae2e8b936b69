"""The read-only scenarios: start-up (7), validate and plan against the stock YAML load
(4), the alias bomb (4b), linearity per phase (8) and a manifest of errors (9).

Whole processes only: what modelsync does inside is being reshaped, so each phase is the
difference between two commands that do one step more than the other.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import fixtures
from benchmarks.bench import Bench, Failure, Row, median, timed_row
from benchmarks.proc import PYTHON, Run, modelsync

HEAVY_IMPORTS = ("requests", "jsonschema", "yaml", "urllib3")
# The reference for plan: the usual way to read a YAML file, in a fresh process.
STOCK_LOAD = "import sys, yaml; yaml.load(open(sys.argv[1], 'rb'), Loader=yaml.CSafeLoader)"
PLAN_RATIO = 0.75
LINEAR = 1.25  # per-model time and memory at the largest size / at the one before
MISSPELT_TIME = 10.0
MISSPELT_MEMORY = 1.5
# A state is bound to its endpoint; plan never contacts it.
OFFLINE_ENDPOINT = "http://127.0.0.1:9/api/v3/load_model"
# One line per problem: "FILE:LINE:COL: models[I] (id 'ID'): ...".
_SUMMARY = re.compile(rb"^Plan: (?P<create>\d+) to create, .* (?P<unchanged>\d+) unchanged", re.M)
_PROBLEM = re.compile(rb"^[^\n]*:\d+:\d+: models\[\d+\] \(id '[^']*'\): ", re.MULTILINE)


def stock_load(manifest: Path) -> list[str]:
    """The argv of the reference: ``yaml.load(..., Loader=CSafeLoader)`` in a new process."""
    return [PYTHON, "-c", STOCK_LOAD, str(manifest)]


def _plan(manifest: Path, state: Path, endpoint: str) -> list[str]:
    return modelsync("plan", str(manifest), "--endpoint", endpoint, "--state", str(state))


def _expect_plan(run: Run, count: int, command: str) -> None:
    """A plan with no state creates every model; against a full state, all are unchanged."""
    if not command.startswith("plan-"):
        return
    found = _SUMMARY.search(run.stdout.read_bytes())
    create, unchanged = (int(found["create"]), int(found["unchanged"])) if found else (-1, -1)
    wanted = (count, 0) if command == "plan-empty" else (0, count)
    if (create, unchanged) != wanted:
        raise Failure(
            f"{command}: expected {wanted[0]} to create and {wanted[1]} unchanged, the plan "
            f"says {create} and {unchanged} (see {run.stdout})"
        )


# --------------------------------------------------------------------------- 7, 4b


def startup(bench: Bench) -> list[Row]:
    """Scenario 7: `--version` and `--help` start-up, and what they import."""
    repeat = max(bench.sizes.repeat, 5)
    floor = [bench.run([PYTHON, "-c", "pass"], "python-c-pass") for _ in range(repeat)]
    rows = [timed_row("7", "`python -c pass` (the interpreter alone)", floor, "", "", None)]
    for flag in ("--version", "--help"):
        runs = [bench.run(modelsync(flag), f"startup{flag}") for _ in range(repeat)]
        heavy = _heavy_imports(bench, flag)
        rows.append(
            timed_row(
                "7",
                f"`modelsync {flag}`",
                runs,
                "≤ 0.30 s; imports none of " + "/".join(HEAVY_IMPORTS[:3]),
                "imports: " + (", ".join(heavy) if heavy else "none of them"),
                median([r.seconds for r in runs]) <= 0.30 and not heavy,
                check=not heavy,
            )
        )
    return rows


def _heavy_imports(bench: Bench, flag: str) -> list[str]:
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "modelsync", flag],
        cwd=bench.dir,
        env=bench.env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = set()
    for line in done.stderr.splitlines():
        top = line.rsplit("|", 1)[-1].strip().split(".", 1)[0]
        if top in HEAVY_IMPORTS:
            found.add(top)
    return sorted(found)


def alias_bomb(bench: Bench) -> Row:
    """The 9-level "billion laughs" manifest: rejected (exit 3), fast."""
    runs = [
        bench.run(modelsync("validate", str(bench.alias_bomb)), "alias-bomb", expect=(3,))
        for _ in range(bench.sizes.repeat)
    ]
    return timed_row(
        "4b",
        "validate a 9-level alias bomb (9⁹ leaves from 300 bytes)",
        runs,
        "rejected (exit 3), ≤ 1 s",
        "rejected, exit 3",
        median([r.seconds for r in runs]) <= 1.0,
    )


# --------------------------------------------------------------------------- 4


def validate_plan(bench: Bench) -> list[Row]:
    """Scenario 4: validate and plan of the large manifest, each interleaved with the
    stock YAML load of the same file; plan against the full state of scenario 3."""
    n = bench.sizes.large
    manifest = bench.manifest(n)
    assert bench.large_state is not None, "scenario 3 builds the state"
    state, endpoint = bench.large_state
    missing = bench.dir / "missing.state.json"
    cases = {
        "stock": stock_load(manifest),
        "validate": modelsync("validate", str(manifest)),
        "plan-empty": _plan(manifest, missing, endpoint),
        "plan-full": _plan(manifest, state, endpoint),
    }
    runs: dict[str, list[Run]] = {k: [] for k in cases}
    for _ in range(bench.sizes.repeat):
        for name, argv in cases.items():
            runs[name].append(bench.run(argv, f"s4-{name}"))
            _expect_plan(runs[name][-1], n, name)

    rows = []
    limits = {
        "validate": ("validate", 3.0),
        "plan-empty": ("plan, no state yet", 3.0),
        "plan-full": (f"plan against a state of all {n:,}", 3.5),
    }
    for name, (label, limit) in limits.items():
        seconds = [r.seconds for r in runs[name]]
        rss = [r.max_rss_mb for r in runs[name]]
        rows.append(
            timed_row(
                "4",
                f"{label}, {n:,} models",
                runs[name],
                f"≤ {limit:g} s, ≤ 200 MB",
                f"peak {max(rss):.0f} MB",
                median(seconds) <= limit and max(rss) <= 200,
            )
        )
    t_stock = median([r.seconds for r in runs["stock"]])
    t_plan = median([r.seconds for r in runs["plan-full"]])
    rows.append(
        timed_row(
            "4c",
            f"reference: stock `yaml.load(..., Loader=CSafeLoader)` of the {n:,}-model file",
            runs["stock"],
            "",
            f"plan against the full state: {t_plan / t_stock:.2f} × this",
            None,
        )
    )
    rows.append(
        Row(
            "4c",
            f"plan against a state of all {n:,} / the stock YAML load",
            [t_plan / t_stock],
            "×",
            f"≤ {PLAN_RATIO:.2f} ×",
            f"{t_plan:.2f} s vs {t_stock:.2f} s (medians)",
            bench.ratio(
                f"plan of {n:,} models against a full state / stock YAML load",
                t_plan / t_stock,
                PLAN_RATIO,
                detail=f"{t_plan:.2f} s vs {t_stock:.2f} s",
            ),
        )
    )
    return rows


# --------------------------------------------------------------------------- 8


# The commands of the linearity table, in the order they run and are shown.
COMMANDS = {
    "pass": "`python -c pass`",
    "version": "`modelsync --version`",
    "stock": "stock YAML load",
    "validate": "`modelsync validate`",
    "plan-empty": "`plan`, no state",
    "plan-full": "`plan`, full state",
}
# Each phase: (label, the command, the command it adds a step to, how it is shown):
# "fixed" (seconds only), "reference" (per model, not judged), "step" (per model, judged).
PHASES = (
    ("start-up", "version", "pass", "fixed"),
    ("stock YAML load (the reference)", "stock", "pass", "reference"),
    ("parse + validate", "validate", "version", "step"),
    ("plan without state", "plan-empty", "validate", "step"),
    ("state read + diff", "plan-full", "plan-empty", "step"),
    ("whole `plan` with a full state", "plan-full", "pass", "step"),
)
# The commands whose per-model memory is judged (the stock load is the reference).
MEMORY_JUDGED = ("validate", "plan-empty", "plan-full")
# Phases too small to judge: under this share of the whole plan at the largest size.
_NOISE_SHARE = 0.05


@dataclass(frozen=True)
class Phases:
    """The linearity measurements: size -> command -> runs."""

    sizes: tuple[int, ...]
    runs: dict[int, dict[str, list[Run]]]

    def seconds(self, size: int, command: str) -> float:
        """Best wall time of ``command`` at ``size``: a phase is a difference of two commands,
        and the noise of a busy machine only ever adds time, so the best runs are compared."""
        return min(r.seconds for r in self.runs[size][command])

    def rss(self, size: int, command: str) -> float:
        """Median peak RSS (MB) of ``command`` at ``size``."""
        return median([r.max_rss_mb for r in self.runs[size][command]])

    def phase(self, size: int, command: str, base: str) -> float:
        """Seconds ``command`` takes beyond ``base``."""
        return self.seconds(size, command) - self.seconds(size, base)

    def kb_per_model(self, size: int, command: str) -> float:
        """Peak memory beyond the bare interpreter's, per model, in KB."""
        return (self.rss(size, command) - self.rss(size, "pass")) * 1024.0 / size


def phases(bench: Bench) -> Phases:
    """Scenario 8: every command of COMMANDS at every size, interleaved per repeat."""
    sizes = bench.sizes.phases
    cases: dict[int, dict[str, list[str]]] = {}
    setup: dict[int, float] = {}
    for size in sizes:
        manifest = bench.manifest(size)
        state = bench.dir / f"full-{size}.state.json"
        bench.echo(f"  setup: a state of all {size:,} models (untimed)")
        start = time.perf_counter()
        try:
            fixtures.write_state(manifest, state, endpoint=OFFLINE_ENDPOINT, env=bench.env)
        except Exception as exc:  # a manifest modelsync refuses (too large?): say which
            raise Failure(f"scenario 8 setup, the {size:,}-model state: {exc}") from exc
        setup[size] = time.perf_counter() - start
        cases[size] = {
            "pass": [PYTHON, "-c", "pass"],
            "version": modelsync("--version"),
            "stock": stock_load(manifest),
            "validate": modelsync("validate", str(manifest)),
            "plan-empty": _plan(manifest, bench.dir / "missing.state.json", OFFLINE_ENDPOINT),
            "plan-full": _plan(manifest, state, OFFLINE_ENDPOINT),
        }
    bench.notes.append(
        "Scenario 8 setup (untimed): writing the full states took "
        + ", ".join(f"{t:.1f} s for {size:,}" for size, t in setup.items())
        + " models (one journal line per model, then one snapshot)."
    )
    runs: dict[int, dict[str, list[Run]]] = {s: {c: [] for c in COMMANDS} for s in sizes}
    for r in range(bench.sizes.repeat):
        for size in sizes:
            bench.echo(f"  repeat {r + 1}/{bench.sizes.repeat}: {size:,} models")
            for command, argv in cases[size].items():
                runs[size][command].append(bench.run(argv, f"s8-{size}-{command}"))
                _expect_plan(runs[size][command][-1], size, command)
    return Phases(tuple(sizes), runs)


def linearity_rows(bench: Bench, measured: Phases) -> list[Row]:
    """The verdicts of scenario 8: per-model time and memory, largest size / the one before."""
    small, large = measured.sizes[-2], measured.sizes[-1]
    whole = measured.phase(large, "plan-full", "pass")
    time_ratios: dict[str, float] = {}
    for label, command, base, kind in PHASES:
        if kind != "step":
            continue
        at_large = measured.phase(large, command, base) / large
        at_small = measured.phase(small, command, base) / small
        if at_large * large < _NOISE_SHARE * whole:
            continue  # too small a share of the whole to judge against noise
        time_ratios[label] = at_large / at_small if at_small > 0 else float("inf")
    memory_ratios = {
        COMMANDS[c]: measured.kb_per_model(large, c) / max(measured.kb_per_model(small, c), 1e-9)
        for c in MEMORY_JUDGED
    }
    rows = []
    for what, ratios in (("time", time_ratios), ("peak memory", memory_ratios)):
        worst = max(ratios, key=lambda k: ratios[k])
        rows.append(
            Row(
                "8",
                f"per-model {what} at {large:,} / at {small:,} models, worst step",
                [ratios[worst]],
                "×",
                f"≤ {LINEAR:.2f} × for every step",
                f"worst: {worst}; "
                + ", ".join(f"{k} {_ratio(v)}" for k, v in ratios.items() if k != worst),
                bench.ratio(
                    f"per-model {what} at {large:,} / at {small:,} models (worst step)",
                    ratios[worst],
                    LINEAR,
                    detail=worst,
                ),
            )
        )
    return rows


# --------------------------------------------------------------------------- 9


def misspelt(bench: Bench) -> list[Row]:
    """Scenario 9: every model holds an error; every error reported, within bounds, next to
    a valid validate of the same size (interleaved)."""
    n = bench.sizes.broken
    valid, broken = bench.manifest(n), bench.manifest(n, misspelt=True)
    good: list[Run] = []
    bad: list[Run] = []
    counts: list[int] = []
    for r in range(bench.sizes.repeat):
        bench.echo(f"  repeat {r + 1}/{bench.sizes.repeat}: validate {n:,} valid / misspelt")
        good.append(bench.run(modelsync("validate", str(valid)), "s9-valid"))
        run = bench.run(modelsync("validate", str(broken)), "s9-misspelt", expect=(3,))
        bad.append(run)
        counts.append(_problems(run.stderr))
    if any(c != n for c in counts):
        raise Failure(f"scenario 9: {counts} errors reported, {n:,} expected")
    t_good = median([r.seconds for r in good])
    t_bad = median([r.seconds for r in bad])
    m_good = max(r.max_rss_mb for r in good)
    m_bad = max(r.max_rss_mb for r in bad)
    return [
        timed_row("9", f"validate {n:,} valid models", good, "", "exit 0", None),
        timed_row(
            "9",
            f"validate {n:,} models each with a misspelt `model_format`",
            bad,
            f"exit 3, every error; ≤ {MISSPELT_TIME:g} × valid time, "
            f"≤ {MISSPELT_MEMORY:g} × its peak",
            f"{counts[0]:,} errors; {t_bad / t_good:.2f} × the time; peak {m_bad:.0f} MB "
            f"= {m_bad / m_good:.2f} × {m_good:.0f} MB",
            bench.ratio(
                f"validate of {n:,} models with an error each / valid, time",
                t_bad / t_good,
                MISSPELT_TIME,
                detail=f"{t_bad:.2f} s vs {t_good:.2f} s",
            )
            & bench.ratio(
                f"validate of {n:,} models with an error each / valid, peak RSS",
                m_bad / m_good,
                MISSPELT_MEMORY,
                detail=f"{m_bad:.0f} MB vs {m_good:.0f} MB",
            ),
        ),
    ]


def _problems(stderr: Path) -> int:
    """How many per-model problems a validate printed."""
    return len(_PROBLEM.findall(stderr.read_bytes()))


def phase_tables(measured: Phases) -> str:
    """Scenario 8's tables: the commands, then the phases as differences between them."""
    sizes = measured.sizes
    head = "| command | " + " | ".join(f"{s:,} models" for s in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    lines = [
        "Whole commands: best wall time / median peak RSS (in brackets: KB per model above the",
        "bare interpreter's peak):",
        "",
        head,
        rule,
    ]
    for command, label in COMMANDS.items():
        cells = []
        for size in sizes:
            cell = (
                f"{_secs(measured.seconds(size, command))} / {measured.rss(size, command):.0f} MB"
            )
            if command not in ("pass", "version"):
                cell += f" ({measured.kb_per_model(size, command):.2f} KB)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Phases (differences of the best runs), seconds and µs per model:", ""]
    last = f"per model, {sizes[-1]:,} / {sizes[-2]:,}"
    lines += [
        "| phase | = | " + " | ".join(f"{s:,}" for s in sizes) + f" | {last} |",
        "|---|---|" + "---:|" * (len(sizes) + 1),
    ]
    for label, command, base, kind in PHASES:
        per_model = kind != "fixed"
        cells = []
        per = []
        for size in sizes:
            value = measured.phase(size, command, base)
            per.append(value / size)
            cells.append(_secs(value) + (f" ({value / size * 1e6:,.1f} µs)" if per_model else ""))
        ratio = f"{per[-1] / per[-2]:.2f}" if per_model and per[-2] > 0 else ""
        formula = f"{COMMANDS[command]} − {COMMANDS[base]}"
        lines.append(f"| {label} | {formula} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value != float("inf") else "∞ (not above zero at the smaller size)"


def _secs(value: float) -> str:
    return f"{value:.2f} s" if abs(value) >= 0.1 else f"{value * 1000:.0f} ms"
