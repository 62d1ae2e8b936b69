"""What every scenario shares: the sizes, a row of the table, and the runner of children.

Every timed figure is a whole child process (start-up included, as a user or a CI job
pays it), run by :meth:`Bench.run` in one temporary folder with one environment.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import fixtures, gen
from benchmarks.proc import PYTHON, SANDBOX_KEY, Launcher, Run, SandboxProcess, modelsync

ROOT = Path(__file__).resolve().parent.parent
LATENCY_MS = 50.0
PARALLELISM = 8


@dataclass(frozen=True)
class Sizes:
    """How many models each scenario uses, and how often each run is repeated."""

    small: int  # apply (scenarios 1, 2, 6)
    large: int  # validate and plan (scenarios 3, 4)
    phases: tuple[int, ...]  # the linearity table (scenario 8); the last two are compared
    broken: int  # the manifest where every model holds an error (scenario 9)
    repeat: int
    quick: bool = False


FULL = Sizes(1_000, 10_000, (1_000, 10_000, 100_000), 100_000, 3)
QUICK = Sizes(100, 1_000, (100, 1_000, 2_000), 2_000, 1, quick=True)


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
    cpu_s: list[float] = field(default_factory=list)
    # The part of the verdict that is no time (a count, an import): judged by --quick too.
    check: bool | None = None


@dataclass(frozen=True)
class Ratio:
    """One targeted ratio, for the summary at the top of the document."""

    what: str
    value: float
    target: str
    ok: bool
    detail: str = ""


class Failure(RuntimeError):
    """A benchmark child failed in a way that makes its numbers meaningless."""


def median(values: Sequence[float]) -> float:
    """The median (the figure every target is judged on)."""
    return statistics.median(values)


def timed_row(
    number: str,
    scenario: str,
    runs: Sequence[Run],
    target: str,
    verdict: str,
    ok: bool | None,
    *,
    check: bool | None = None,
) -> Row:
    """A row of wall times, with the runs' peak memory and CPU time."""
    return Row(
        number,
        scenario,
        [r.seconds for r in runs],
        "s",
        target,
        verdict,
        ok,
        [r.max_rss_mb for r in runs],
        [r.cpu_seconds for r in runs],
        check,
    )


class Bench:
    """The temporary folder, the children's environment, the inputs, the notes."""

    def __init__(self, workdir: Path, sizes: Sizes, *, echo: Callable[[str], None]) -> None:
        self.dir = workdir
        self.sizes = sizes
        self.echo = echo
        self.logs = workdir / "logs"
        self.env = child_env(workdir / "pycache")
        self.alias_bomb = workdir / "alias-bomb.yaml"
        gen.write_alias_bomb(self.alias_bomb)
        self.notes: list[str] = []
        self.ratios: list[Ratio] = []
        # Written by the scenarios that build them, read by later ones: (state, endpoint).
        self.small_state: tuple[Path, str] | None = None
        self.large_state: tuple[Path, str] | None = None
        self._manifests: dict[tuple[int, bool], Path] = {}
        self._count = 0
        self._launcher = Launcher()

    def close(self) -> None:
        """Stop the launcher of children."""
        self._launcher.close()

    def ratio(
        self, what: str, value: float, limit: float, *, at_least: bool = False, detail: str = ""
    ) -> bool:
        """Note a targeted ratio (at most ``limit``, or at least); whether it is met."""
        ok = value >= limit if at_least else value <= limit
        target = f"{'≥' if at_least else '≤'} {limit:g} ×"
        self.ratios.append(Ratio(what, value, target, ok, detail))
        return ok

    def manifest(self, count: int, *, misspelt: bool = False) -> Path:
        """The generated manifest of ``count`` models (written once)."""
        key = (count, misspelt)
        if key not in self._manifests:
            name = f"models-{count}{'-misspelt' if misspelt else ''}.yaml"
            path = self.dir / name
            gen.write_manifest(path, count, misspelt=misspelt)
            self._manifests[key] = path
        return self._manifests[key]

    def bodies(self, count: int) -> Path:
        """The JSON bodies apply sends for the ``count``-model manifest (written once)."""
        path = self.dir / f"bodies-{count}.jsonl"
        if not path.exists():
            fixtures.write_bodies(self.manifest(count), path, key=SANDBOX_KEY, env=self.env)
        return path

    def warm_up(self) -> None:
        """Compile every module once, as installing the package would (by folder, so that no
        module name of modelsync, whose insides are being reshaped, is written here)."""
        self.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "modelsync")], "warm-up-compile")
        imports = "import click, http.client, jsonschema, requests, yaml"
        self.run([PYTHON, "-c", imports], "warm-up-imports")

    def run(self, args: Sequence[str], name: str, *, expect: Sequence[int] = (0,)) -> Run:
        """Run one child to its end; a :class:`Failure` if its exit code is unexpected."""
        self._count += 1
        result = self._launcher.run(
            args, env=self.env, logs=self.logs, name=f"{self._count:03d}-{name}", cwd=self.dir
        )
        if result.returncode not in expect:
            raise Failure(
                f"{name}: exit {result.returncode} (expected {'/'.join(map(str, expect))}):\n"
                f"{shlex.join(args)}\n{result.tail()}"
            )
        return result

    def apply(
        self,
        manifest: Path,
        sandbox: SandboxProcess,
        state: Path,
        report: Path,
        name: str,
        *,
        parallelism: int = PARALLELISM,
    ) -> tuple[Run, dict[str, int]]:
        """``modelsync apply`` against ``sandbox``; its run and its report's summary."""
        result = self.run(
            modelsync(
                "apply",
                str(manifest),
                "--endpoint",
                sandbox.load_model_url,
                "--state",
                str(state),
                "--parallelism",
                str(parallelism),
                "--report",
                str(report),
            ),
            name,
            expect=(0, 1),
        )
        summary = json.loads(report.read_text("utf-8"))["summary"]
        return result, summary

    def fresh(self, name: str) -> Path:
        """A new empty folder for one run."""
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=False)
        return folder


def child_env(pycache: Path | None = None) -> dict[str, str]:
    """The children's environment: the sandbox's key, the manifests' token, this checkout."""
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
