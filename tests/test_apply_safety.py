"""apply against a hostile service (issue 11, DESIGN §4): the real command, as a child process,
over real HTTP to a server of the test's own (:mod:`tests.hostile`), never modelsync's sandbox.

What each scenario checks, in the server's own record of what it received:

- a model loaded by hand is never overwritten, in this run or later ones (a conflict);
- a service failing once per model (503, 500, garbage) converges: exit 0, 2 requests per model;
- a real outage still stops early (printed: how many requests, how many seconds);
- time limits hold for requests in flight: a hanging or dripping server with ``--deadline 5``,
  SIGTERM (``--grace`` 10 s), two SIGINTs;
- smaller ones: an unwritable ``--report`` (exit 64, nothing sent), a redirected endpoint (stop
  after the first answer), a refused connection (one short line), 429s outside
  ``--max-attempts``, the spam filter's wait.

Every child has a subprocess timeout a little above the bound it is held to, so a failing
scenario fails in seconds, not minutes. ``pytest -s`` shows what each one observed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import numbered, write_models_manifest
from tests.hostile import Hostile

pytestmark = pytest.mark.slow

KEY = "hostile-test-key-51d0e2"
# A child that runs longer than this is a hang (each test passes a tighter one where it can).
CHILD_TIMEOUT = 60.0
# The limits of DESIGN §4 these tests hold modelsync to.
BREAKER_RUN = 10  # retryable failures in a row (over >= 3 models) that pause new models
DEFAULT_PARALLELISM = 4
DEADLINE_S = 5
DEADLINE_BOUND_S = 15.0  # a --deadline 5 run ends within 15 s of its start
SIGTERM_BOUND_S = 12.0  # default --grace 10 s, plus the time to record and exit
SECOND_SIGINT_BOUND_S = 3.0
MAX_LINE = 200  # a network error is "one short line"


# --------------------------------------------------------------------------- helpers


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSYNC_")}
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["MODELSYNC_API_KEY"] = KEY
    return env


def argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "modelsync", *map(str, args)]


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def run(
    *args: str | Path, cwd: Path, timeout: float = CHILD_TIMEOUT
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``modelsync ARGS`` to its end; the process and its wall time in seconds."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv(*args),
            cwd=cwd,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"modelsync {' '.join(map(str, args))}: still running after {timeout} s (killed)"
            f"\n--- stdout\n{_text(e.stdout)}\n--- stderr\n{_text(e.stderr)}"
        )
    elapsed = time.monotonic() - started
    assert_no_crash(proc.stderr, shown(proc))
    return proc, elapsed


def assert_no_crash(stderr: str, what: str) -> None:
    """A traceback is a crash (exit 1 or 70): never the behaviour a test is looking for."""
    if "Traceback (most recent call last)" in stderr:
        pytest.fail(f"modelsync crashed, so this scenario says nothing:\n{what}")


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def apply_args(manifest: str | Path, server: Hostile, state: Path, *extra: str) -> list[str]:
    return ["apply", str(manifest), "--endpoint", server.url, "--state", str(state), *extra]


def state_records(path: Path, endpoint: str) -> dict[str, dict[str, Any]]:
    """The state's model records, as JSON (``models[ID]``), after the run."""
    journal = path.with_name(path.name + ".journal")
    if journal.exists():
        # A run is meant to fold its journal at its end; if one is left, read it the way
        # modelsync does, so the test judges the behaviour, not the file layout.
        from modelsync.store.file import read_state

        return {m: r.to_json() for m, r in read_state(path, endpoint).models.items()}
    document = json.loads(path.read_text(encoding="utf-8"))
    return dict(document["models"])


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """``modelsync ARGS`` started in the background, its output in files (no pipe to fill)."""

    def __init__(self, tmp_path: Path, *args: str | Path) -> None:
        self._out = tmp_path / "child.stdout"
        self._err = tmp_path / "child.stderr"
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv(*args), cwd=tmp_path, env=child_env(), stdout=out, stderr=err
            )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` s (then it is killed)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return self._err.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        out = self._out.read_text(encoding="utf-8", errors="replace")
        return f"exit {self.proc.returncode}\n--- stdout\n{out}\n--- stderr\n{self.stderr()}"


def held_server(behaviour: str) -> Hostile:
    """A server that answers the first model and holds every other (``hang`` or ``drip``).

    The first answer comes back, so a client that waits for one answer before it opens up
    its parallelism has several requests in flight when the limit or the signal comes.
    """
    return Hostile(behaviour, per_model={"model-000": "ok"})


def assert_in_flight_pending(server: Hostile, state: Path, ids: Sequence[str]) -> list[str]:
    """The models whose request the server held are ``pending``, the answered one submitted,
    the others not submitted; the held ones (in flight when the run ended)."""
    held = sorted({s.model_id or "" for s in server.requests() if s.answer in ("hang", "drip")})
    assert held, f"no request was held, nothing was in flight: {server.requests()}"
    records = state_records(state, server.url)
    for model_id in held:
        assert model_id in records, f"{model_id} was sent but is not in the state"
        assert records[model_id]["status"] == "pending", (model_id, records[model_id])
    answered = {s.model_id or "" for s in server.requests() if s.answer == "success"}
    for model_id in answered:
        assert records[model_id]["status"] == "submitted", (model_id, records[model_id])
    for model_id in ids:
        if model_id not in held and model_id not in answered and model_id in records:
            assert records[model_id]["status"] != "submitted", (model_id, records[model_id])
    return held


# ------------------------------------------------------------ 0. the harness itself


def test_ok_server_each_model_once_then_nothing(tmp_path: Path) -> None:
    """The baseline: a well-behaved server, one request per model, a second run sends none."""
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(8))
    state = tmp_path / "prod.state.json"
    with Hostile("ok", latency=0.05) as server:
        first, elapsed = run(*apply_args("prod.yaml", server, state), cwd=tmp_path)
        assert first.returncode == 0, shown(first)
        assert server.counts() == dict.fromkeys(ids, 1)
        assert {s.force_load for s in server.requests()} == {"no"}
        assert {r["status"] for r in state_records(state, server.url).values()} == {"submitted"}
        second, _ = run(*apply_args("prod.yaml", server, state), cwd=tmp_path)
        assert second.returncode == 0, shown(second)
        assert server.count() == len(ids)
    print(f"\n[ok] {len(ids)} models, {len(ids)} requests, {elapsed:.1f} s")


# --------------------------------------------------- 1. a model loaded by hand: a conflict


def test_a_model_loaded_by_hand_is_never_overwritten(tmp_path: Path) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", ["hand-loaded", "fresh-a", "fresh-b"])
    state = tmp_path / "prod.state.json"
    hint = re.compile(r"modelsync state adopt hand-loaded (\S*/)?prod\.yaml")
    with Hostile("ok", exists={"hand-loaded"}) as server:
        args = apply_args("prod.yaml", server, state)

        first, _ = run(*args, cwd=tmp_path)
        assert first.returncode == 1, shown(first)
        assert hint.search(first.stdout + first.stderr), shown(first)
        [asked] = server.requests("hand-loaded")
        assert (asked.force_load, asked.answer) == ("no", "exists")
        for model_id in ids[1:]:  # the others are submitted normally
            assert [(s.force_load, s.answer) for s in server.requests(model_id)] == [
                ("no", "success")
            ]
        records = state_records(state, server.url)
        assert records["hand-loaded"]["status"] == "failed", records["hand-loaded"]
        assert records["hand-loaded"].get("cause") == "conflict", records["hand-loaded"]
        assert {records[m]["status"] for m in ids[1:]} == {"submitted"}

        for number in (2, 3):  # cron, 30 minutes later, twice
            before = server.count()
            again, _ = run(*args, cwd=tmp_path)
            assert again.returncode == 1, f"run {number}: {shown(again)}"
            assert server.count() == before, f"run {number} sent {server.requests()[before:]}"
            assert re.search(r"^\s*! hand-loaded\b", again.stdout, re.MULTILINE), shown(again)
            assert hint.search(again.stdout + again.stderr), shown(again)

        assert server.overwritten == []
        assert all(s.force_load == "no" for s in server.requests("hand-loaded"))

        adopt, _ = run(
            "state", "adopt", "hand-loaded", "prod.yaml", "--state", state,
            "--endpoint", server.url, cwd=tmp_path,
        )  # fmt: skip
        assert adopt.returncode == 0, shown(adopt)
        before = server.count()
        fourth, _ = run(*args, cwd=tmp_path)
        assert fourth.returncode == 0, shown(fourth)
        assert server.count() == before, server.requests()[before:]
        assert server.overwritten == []
        assert state_records(state, server.url)["hand-loaded"]["status"] == "submitted"


# ------------------------------------------- 2. a flaky service: once per model, then fine


@pytest.mark.parametrize("fail_with", ["503", "500", "garbage"])
def test_failing_once_per_model_converges_with_two_requests_each(
    tmp_path: Path, fail_with: str
) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(20))
    state = tmp_path / "prod.state.json"
    with Hostile("fail_once", fail_with=fail_with) as server:
        proc, elapsed = run(*apply_args("prod.yaml", server, state), cwd=tmp_path)
        assert proc.returncode == 0, shown(proc)
        assert server.counts() == dict.fromkeys(ids, 2), server.counts()
        for model_id in ids:
            seen = server.requests(model_id)
            assert [s.answer for s in seen] == [fail_with, "success"], seen
            # A create goes out with no; after an answer that may have loaded it
            # (maybe_reached), the retry says yes.
            assert [s.force_load for s in seen] == ["no", "yes"], seen
    records = state_records(state, server.url)
    assert {records[m]["status"] for m in ids} == {"submitted"}
    print(f"\n[{fail_with} once] 20 models, {server.count()} requests, exit 0, {elapsed:.1f} s")


# ------------------------------------------------------------- 3. a real outage: stop early


def test_a_real_outage_stops_early(tmp_path: Path) -> None:
    models, attempts = 20, 3
    write_models_manifest(tmp_path / "prod.yaml", numbered(models))
    state = tmp_path / "prod.state.json"
    # DESIGN §4: new models pause after BREAKER_RUN failures in a row; when that happens at
    # most parallelism - 1 other first attempts are in flight, and one more model may go as a
    # probe if no retry is under way. Probing stops at 3 models x 2 probes (or 60 s); each
    # model has at most --max-attempts requests. So at most 14 models ever see a request and
    # at most 14 x 3 = 42 requests, against 20 x 3 = 60 with no breaker at all.
    most_models = BREAKER_RUN + DEFAULT_PARALLELISM - 1 + 1
    most_requests = most_models * attempts
    with Hostile("outage") as server:
        proc, elapsed = run(
            *apply_args("prod.yaml", server, state, "--max-attempts", str(attempts)),
            cwd=tmp_path,
            timeout=60,
        )
        total, reached = server.count(), len(server.counts())
        times = [s.at for s in server.requests()]
    print(
        f"\n[outage] 20 models, --max-attempts {attempts}: exit {proc.returncode} after "
        f"{total} requests to {reached} models, {elapsed:.1f} s "
        f"(requests over {times[-1] - times[0] if times else 0:.1f} s); bound: "
        f"{most_requests} requests, {most_models} models"
    )
    assert proc.returncode == 1, shown(proc)
    assert reached < models, f"every model was tried: {server.counts()}"
    assert reached <= most_models, server.counts()
    assert total <= most_requests, server.counts()
    assert elapsed < 60
    records = state_records(state, server.url)
    assert not any(r["status"] == "submitted" for r in records.values())


# ------------------------------------------------ 4. time limits hold for requests in flight


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_deadline_ends_the_run_on_time_with_in_flight_models_pending(
    tmp_path: Path, behaviour: str
) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(6))
    state = tmp_path / "prod.state.json"
    with held_server(behaviour) as server:
        proc, elapsed = run(
            *apply_args("prod.yaml", server, state, "--deadline", str(DEADLINE_S)),
            cwd=tmp_path,
            timeout=DEADLINE_BOUND_S + 10,
        )
        print(
            f"\n[{behaviour} --deadline {DEADLINE_S}] exit {proc.returncode} after "
            f"{elapsed:.1f} s; {server.count()} requests to {len(server.counts())} models"
        )
        assert elapsed <= DEADLINE_BOUND_S, shown(proc)
        assert proc.returncode == 1, shown(proc)
        held = assert_in_flight_pending(server, state, ids)
        print(f"[{behaviour} --deadline {DEADLINE_S}] pending: {', '.join(held)}")


def test_sigterm_during_a_hanging_request_exits_143_within_the_grace(tmp_path: Path) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(6))
    state = tmp_path / "prod.state.json"
    with held_server("hang") as server:
        child = Child(tmp_path, *apply_args("prod.yaml", server, state))
        try:
            # The first model answered, then at least one held.
            assert server.wait_for_requests(2, 20), f"no request held: {server.requests()}"
            time.sleep(max(0.0, child.started + 1.0 - time.monotonic()))
            assert child.proc.poll() is None, child.output()
            child.signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = child.wait(timeout=SIGTERM_BOUND_S + 5)
            took = time.monotonic() - signalled
        finally:
            child.kill()
        print(f"\n[SIGTERM] exit {code} {took:.1f} s after the signal")
        assert_no_crash(child.stderr(), child.output())
        assert code is not None, f"still running {SIGTERM_BOUND_S + 5} s after SIGTERM (killed)"
        assert took <= SIGTERM_BOUND_S, child.output()
        assert code == 143, child.output()
        assert_in_flight_pending(server, state, ids)


def test_a_second_sigint_abandons_in_flight_requests_at_once(tmp_path: Path) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(6))
    state = tmp_path / "prod.state.json"
    with held_server("hang") as server:
        child = Child(tmp_path, *apply_args("prod.yaml", server, state))
        try:
            # The first model answered, then at least one held.
            assert server.wait_for_requests(2, 20), f"no request held: {server.requests()}"
            child.signal(signal.SIGINT)
            time.sleep(1.0)
            # The first SIGINT gives the hanging requests up to --grace: still running.
            assert child.proc.poll() is None, child.output()
            child.signal(signal.SIGINT)
            signalled = time.monotonic()
            code = child.wait(timeout=SECOND_SIGINT_BOUND_S + 5)
            took = time.monotonic() - signalled
        finally:
            child.kill()
        print(f"\n[SIGINT x2] exit {code} {took:.1f} s after the second")
        assert_no_crash(child.stderr(), child.output())
        assert code is not None, f"still running {SECOND_SIGINT_BOUND_S + 5} s after (killed)"
        assert took <= SECOND_SIGINT_BOUND_S, child.output()
        assert code == 130, child.output()
        assert_in_flight_pending(server, state, ids)


# ------------------------------------------------------------------------ 5. smaller ones


@pytest.mark.parametrize("where", ["in-a-missing-folder", "under-a-file", "a-folder"])
def test_an_unwritable_report_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, where: str
) -> None:
    write_models_manifest(tmp_path / "prod.yaml", numbered(3))
    state = tmp_path / "prod.state.json"
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    report = {
        "in-a-missing-folder": tmp_path / "no-such-folder" / "report.json",
        "under-a-file": tmp_path / "a-file" / "report.json",
        "a-folder": tmp_path,
    }[where]
    with Hostile("ok") as server:
        proc, _ = run(
            *apply_args("prod.yaml", server, state, "--report", str(report)), cwd=tmp_path
        )
        assert proc.returncode == 64, shown(proc)
        assert server.count() == 0, server.requests()
        assert "Traceback" not in proc.stderr, shown(proc)


@pytest.mark.parametrize("parallelism", [1, DEFAULT_PARALLELISM])
def test_a_redirected_endpoint_stops_the_run_after_the_first_answer(
    tmp_path: Path, parallelism: int
) -> None:
    write_models_manifest(tmp_path / "prod.yaml", numbered(10))
    state = tmp_path / "prod.state.json"
    with Hostile("redirect") as server:
        proc, _ = run(
            *apply_args("prod.yaml", server, state, "--parallelism", str(parallelism)),
            cwd=tmp_path,
        )
        seen = server.requests()
        assert proc.returncode == 1, shown(proc)
        # Never followed (every request, on any path, is counted).
        assert all(s.path == "/api/v3/load_model" for s in seen), seen
        if parallelism == 1:
            assert len(seen) == 1, seen
        else:  # at most the requests already in flight when the first answer came
            assert 1 <= len(seen) <= parallelism, seen
        assert server.redirect_to in proc.stdout + proc.stderr, shown(proc)
        assert "Traceback" not in proc.stderr, shown(proc)
    print(f"\n[redirect] --parallelism {parallelism}: {len(seen)} request(s) for 10 models")


def test_a_refused_connection_is_one_short_line(tmp_path: Path) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", numbered(3))
    state = tmp_path / "prod.state.json"
    endpoint = f"http://127.0.0.1:{free_port()}/api/v3/load_model"
    proc, _ = run(
        "apply", "prod.yaml", "--endpoint", endpoint, "--state", state, "--max-attempts", "2",
        cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1, shown(proc)
    for noise in ("HTTPConnectionPool", "urllib3", "Traceback"):
        assert noise not in proc.stderr + proc.stdout, shown(proc)
    long = [line for line in proc.stderr.splitlines() if len(line) > MAX_LINE]
    assert not long, long
    assert "127.0.0.1" in proc.stderr, shown(proc)  # kind and host
    records = state_records(state, endpoint)
    for model_id in ids:
        record = records[model_id]
        assert record["status"] == "failed", record
        assert record.get("cause") == "never_sent", record
        error = record["last_error"] or ""
        assert error and len(error) <= MAX_LINE and "HTTPConnectionPool" not in error, record
    print(f"\n[refused] stderr:\n{proc.stderr}")


def test_429s_do_not_use_up_max_attempts(tmp_path: Path) -> None:
    ids = write_models_manifest(tmp_path / "prod.yaml", ["throttled", "calm-a", "calm-b"])
    state = tmp_path / "prod.state.json"
    with Hostile(
        "ok", per_model={"throttled": "throttle"}, throttle_times=3, retry_after=1
    ) as server:
        proc, elapsed = run(
            *apply_args("prod.yaml", server, state, "--max-attempts", "2"), cwd=tmp_path, timeout=30
        )
        assert proc.returncode == 0, shown(proc)
        seen = server.requests("throttled")
        assert [s.answer for s in seen] == ["throttle"] * 3 + ["success"], seen
        gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
        assert all(gap >= 1.0 for gap in gaps), gaps  # retry_after: 1, plus 0-20% jitter
        assert server.counts() == {"throttled": 4, "calm-a": 1, "calm-b": 1}
    records = state_records(state, server.url)
    assert {records[m]["status"] for m in ids} == {"submitted"}
    print(f"\n[429] waits {[round(g, 2) for g in gaps]} s; {elapsed:.1f} s in all")


def test_the_spam_filters_wait_is_honoured(tmp_path: Path) -> None:
    write_models_manifest(tmp_path / "prod.yaml", ["repeated"])
    state = tmp_path / "prod.state.json"
    with Hostile("spam_once", spam_wait=2) as server:
        proc, _ = run(*apply_args("prod.yaml", server, state), cwd=tmp_path, timeout=30)
        assert proc.returncode == 0, shown(proc)
        first, second = server.requests("repeated")
        assert (first.answer, second.answer) == ("spam", "success")
        gap = second.at - first.at
        assert gap >= 2.0, f"retried {gap:.2f} s after 'please wait for 2 seconds'"
    assert state_records(state, server.url)["repeated"]["status"] == "submitted"
    print(f"\n[spam filter] retried {gap:.2f} s after 'wait for 2 seconds'")
