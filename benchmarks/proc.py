"""Whole-process measurement: run a child, time it, read its peak memory from wait4.

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


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    logs: Path,
    name: str,
    timeout: float = 900.0,
    cwd: Path | None = None,
) -> Run:
    """Run ``args`` to completion; its wall time and its own peak RSS via os.wait4."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(args), stdout=out, stderr=err, env=dict(env), cwd=cwd)
        watchdog = threading.Timer(timeout, _kill, (proc.pid,))
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: Popen must not wait for it again
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, usage.ru_maxrss / 1024.0, cpu, code, out_path, err_path)


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
