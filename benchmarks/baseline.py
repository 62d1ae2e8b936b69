"""The baseline: what a user writes instead of modelsync, a plain sequential loop.

    python benchmarks/baseline.py MANIFEST ENDPOINT

Reads the manifest with ``yaml.safe_load``, merges the defaults, fills in ``${VAR}``
from the environment, and POSTs each model with ``requests.post`` (the key from
MODELSYNC_API_KEY), one after the other. No state, no retries, no validation. Exits 1
if any answer is not a success.
"""

from __future__ import annotations

import os
import sys

import requests
import yaml


def main(argv: list[str]) -> int:
    manifest_path, endpoint = argv
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    defaults = manifest.get("defaults") or {}
    key = os.environ["MODELSYNC_API_KEY"]
    failed = 0
    for model in manifest["models"]:
        body = {**defaults, **model}
        body.pop("labels", None)
        body.setdefault("model_name", body["model_id"])
        for name, value in body.items():
            if isinstance(value, bool):  # YAML 1.1 reads `no` as False; the API wants "no"
                body[name] = "yes" if value else "no"
        body["url"] = os.path.expandvars(body["url"])
        body["key"] = key
        response = requests.post(endpoint, json=body, timeout=60)
        if response.status_code != 200 or response.json().get("status") != "success":
            failed += 1
    print(f"posted {len(manifest['models'])} models, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
