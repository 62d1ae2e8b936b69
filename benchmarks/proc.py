"""Whole-process measurement: run a child, time it, read its peak memory from wait4.

The children are started by a small launcher process (see ``_LAUNCHER``).

And the sandbox as a separate process (in-process it would share the GIL with the
client and cost it ~10%).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
SANDBOX_KEY = "sandbox"
MODEL_LIST_PATH = "/api/v4/dreambooth/model_list"


@dataclass(frozen=True)
class Run:
    """One finished child process."""

    seconds: float  # wall time from spawn to exit
    max_rss_mb: float  # peak resident memory of the child (ru_maxrss)
    cpu_seconds: float  # user + system CPU time of the child
    returncode: int
    stdout: Path
    stderr: Path

    def tail(self, lines: int = 15) -> str:
        """The end of the child's stderr, for error messages."""
        text = self.stderr.read_text("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])


# The launcher of measured children (run with ``python -S``: os, sys, json, time only).
# A child's ru_maxrss starts at the memory of the process it was forked from (Linux keeps
# the high-water mark across fork and exec): spawned from the benchmark itself, which
# holds manifests and states, every child would report the benchmark's size. Spawned
# from this small process, a child's floor is ~8 MB, below a bare `python -c pass`.
_LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.chdir(job["cwd"])
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
        (os.POSIX_SPAWN_DUP2, err, 2),
    ]
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(job["args"][0], job["args"], job["env"], file_actions=actions)
    except OSError as exc:
        os.write(err, f"cannot start {job['args'][0]}: {exc}\n".encode())
        print(json.dumps({"pid": None}), flush=True)
        print(json.dumps({"seconds": 0, "code": 127, "maxrss": 0, "cpu": 0}), flush=True)
        continue
    finally:
        os.close(out)
        os.close(err)
    print(json.dumps({"pid": pid}), flush=True)
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    done = {
        "seconds": seconds,
        "code": os.waitstatus_to_exitcode(status),
        "maxrss": usage.ru_maxrss,
        "cpu": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(done), flush=True)
"""


class Launcher:
    """Runs the measured children from a small process of its own (see _LAUNCHER)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [PYTHON, "-S", "-c", _LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the launcher (it ends when its input does)."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=30)

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        logs: Path,
        name: str,
        timeout: float = 900.0,
        cwd: Path | None = None,
    ) -> Run:
        """Run ``args`` to completion: its wall time, and its own peak RSS and CPU time."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        logs.mkdir(parents=True, exist_ok=True)
        out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
        job = {
            "args": list(args),
            "env": dict(env),
            "cwd": str(cwd or Path.cwd()),
            "stdout": str(out_path),
            "stderr": str(err_path),
        }
        self._proc.stdin.write(json.dumps(job) + "\n")
        pid = json.loads(self._next_line())["pid"]
        watchdog = threading.Timer(timeout, _kill, (pid,)) if pid else None
        if watchdog is not None:
            watchdog.start()
        try:
            done = json.loads(self._next_line())
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return Run(
            done["seconds"], done["maxrss"] / 1024.0, done["cpu"], done["code"], out_path, err_path
        )

    def _next_line(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.poll()
            raise RuntimeError(f"the launcher of benchmark children died (exit {code})")
        return line


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def modelsync(*args: str) -> list[str]:
    """The argv of a whole ``python -m modelsync`` process."""
    return [PYTHON, "-m", "modelsync", *args]


class SandboxProcess:
    """``python -m modelsync sandbox`` on a free port, for the length of a with block."""

    def __init__(
        self,
        workdir: Path,
        *,
        latency_ms: float,
        fail_rate: float = 0.0,
        reset_rate: float = 0.0,
        seed: int = 1,
        max_queued: int = 16,
        env: Mapping[str, str],
    ) -> None:
        self.request_log = workdir / f"sandbox-requests-{time.monotonic_ns()}.jsonl"
        self._args = modelsync(
            "sandbox",
            "--port",
            "0",  # the sandbox picks a free port and prints it: no race with other runs
            "--api-key",
            SANDBOX_KEY,
            "--latency",
            f"{latency_ms:g}",
            "--fail-rate",
            f"{fail_rate:g}",
            "--reset-rate",
            f"{reset_rate:g}",
            "--seed",
            str(seed),
            "--max-queued",
            str(max_queued),
            "--request-log",
            str(self.request_log),
        )
        self._env = dict(env)
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.load_model_url = ""

    def __enter__(self) -> SandboxProcess:
        proc = subprocess.Popen(
            self._args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
            cwd=self._workdir,
        )
        self._proc = proc
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode("utf-8", "replace")
            if not line:
                break
            seen.append(line)
            if line.startswith("load_model: "):
                self.load_model_url = line.split(" ", 1)[1].strip()
                self.base_url = self.load_model_url.split("/api/", 1)[0]
                break
        if not self.load_model_url:
            self._stop()
            raise RuntimeError("the sandbox did not start:\n" + "".join(seen))
        # Keep draining stderr so the sandbox never blocks on a full pipe.
        threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def requests_received(self) -> int:
        """How many requests the sandbox logged so far (one JSON line each)."""
        try:
            with open(self.request_log, "rb") as handle:
                return sum(1 for _ in handle)
        except FileNotFoundError:
            return 0

    def model_list(self) -> list[dict[str, object]]:
        """The sandbox's model_list answer: every model it holds, with its status."""
        body = json.dumps({"key": SANDBOX_KEY}).encode()
        request = urllib.request.Request(
            self.base_url + MODEL_LIST_PATH,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            listing = json.loads(answer.read())
        if not isinstance(listing, list):
            raise RuntimeError(f"model_list answered {listing!r}")
        return listing


def _drain(stream: object) -> None:
    read = getattr(stream, "read", None)
    if read is None:
        return
    while read(65536):
        pass
