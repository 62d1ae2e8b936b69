"""The local API sandbox: a stdlib HTTP server that behaves like the load_model API family.

It serves the paths of API_NOTES.md on 127.0.0.1 (HTTP/1.1, keep-alive):

- ``POST /api/v3/load_model`` (and ``/api/v4/dreambooth/load_model``);
- ``POST /api/v4/dreambooth/model_list`` -> a JSON array of the models it holds;
- ``POST /api/v6/images/model_reload`` (and ``/api/v4/dreambooth/model_reload``).

Any other path is a 404 JSON error; another method on a known path is a 405.

Envelopes, chosen so that a client meets every style the real service uses:

- body not JSON, or not an object -> HTTP 400 ``{"status": "error", "message": "..."}``;
- ``key`` missing or empty -> HTTP **200** ``{"status": "error", "messege": "Invalid Api Key",
  "tip": "..."}`` (an error in a 200 body, with the old ``messege`` spelling);
- ``key`` wrong -> HTTP 401 ``{"status": "error", "message": "Invalid API key"}``;
- a field missing or invalid -> HTTP 200 with Laravel's object message, every field at once:
  ``{"status": "error", "message": {"url": ["The url field is required."]}}``;
- load_model of a ``model_id`` it already holds with ``force_load: "no"`` -> HTTP 200
  ``{"status": "error", "message": "Model id already exists"}``; with ``"yes"`` (the default,
  as in the API's OpenAPI) the model loads again;
- success -> ``{"status": "success", "message": "model load started"}``; the model is then
  ``loading`` for ``load_seconds`` and ``model_ready`` after;
- more than ``max_queued`` requests in flight (any endpoint, this one included) -> HTTP 429
  ``{"status": "error", "message": "Rate limit exceeded. Maximum N queued requests allowed.",
  "retry_after": R}``. A rejected request is answered at once, without the latency.

``latency_ms`` is slept before every load_model answer past the rate gate, outside any lock,
so concurrent requests overlap and the in-flight window includes the sleep.

Faults: one draw per authenticated, valid load_model request, from one ``random.Random(seed)``,
so a seed gives the same fault sequence for the same request sequence. The rates partition
[0, 1) and must add up to at most 1:

- ``fail_rate`` -> HTTP 500 or 503 with a JSON error; the model is not recorded;
- ``reset_rate`` -> the request is processed (the model IS recorded), then the connection is
  dropped without an answer: the case where a retry repeats something that reached the server;
- ``garbage_rate`` -> HTTP 200 with an HTML page, an empty body or truncated JSON; the model is
  not recorded.

``request_log`` gets one JSON line per request received, with the key masked
(:mod:`modelsync.sandbox.log`).

Modules: :mod:`~modelsync.sandbox.config` (SandboxConfig, SandboxError),
:mod:`~modelsync.sandbox.schema` (paths and the request bodies accepted),
:mod:`~modelsync.sandbox.routes` (the endpoints, models held, counters),
:mod:`~modelsync.sandbox.faults`, :mod:`~modelsync.sandbox.log` (the request log),
:mod:`~modelsync.sandbox.reply` and :mod:`~modelsync.sandbox.server` (HTTP, start/stop,
serve_forever).
"""

from __future__ import annotations

from modelsync.sandbox.config import SandboxConfig, SandboxError
from modelsync.sandbox.schema import LOAD_MODEL_PATH
from modelsync.sandbox.server import Sandbox, serve_forever

__all__ = [
    "LOAD_MODEL_PATH",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "serve_forever",
]
