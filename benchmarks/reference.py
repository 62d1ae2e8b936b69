"""The reference for apply: the physical limit of posting the bodies from Python.

    python benchmarks/reference.py BODIES URL THREADS

``BODIES`` holds one JSON body per line, exactly the bytes modelsync sends (prepared
before the run by :func:`benchmarks.fixtures.write_bodies`, key included). ``THREADS``
threads each hold one keep-alive ``http.client.HTTPConnection`` and post the next body
until none is left: no state, no retries, no validation, nothing but the standard
library. Every answer is read whole; the run fails (exit 1) if any is not a success.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import urllib.parse

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def main(argv: list[str]) -> int:
    bodies_path, url, threads = argv[0], argv[1], int(argv[2])
    with open(bodies_path, "rb") as handle:
        bodies = [line.rstrip(b"\n") for line in handle if line.strip()]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit(f"reference.py: an http:// URL is needed, not {url!r}")
    host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
    pending = iter(bodies)
    lock = threading.Lock()
    failures: list[str] = []
    successes = [0] * threads

    def worker(slot: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            while True:
                with lock:
                    body = next(pending, None)
                if body is None:
                    return
                connection.request("POST", path, body=body, headers=HEADERS)
                answer = connection.getresponse()
                data = answer.read()
                if answer.status == 200 and json.loads(data).get("status") == "success":
                    successes[slot] += 1
                else:
                    failures.append(f"HTTP {answer.status}: {data[:200]!r}")
        except Exception as exc:  # any error ends this worker, and the run fails
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done = sum(successes)
    print(f"posted {done} of {len(bodies)} bodies on {threads} connections")
    if failures or done != len(bodies):
        print(f"{len(failures)} failed, first: {failures[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
