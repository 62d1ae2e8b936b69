"""The local API sandbox: a stdlib HTTP server that behaves like the load_model API family.

It serves the paths of API_NOTES.md on 127.0.0.1 (HTTP/1.1, keep-alive):

- ``POST /api/v3/load_model`` (and ``/api/v4/dreambooth/load_model``);
- ``POST /api/v4/dreambooth/model_list`` -> a JSON array of the models it holds;
- ``POST /api/v6/images/model_reload`` (and ``/api/v4/dreambooth/model_reload``).

Any other path is a 404 JSON error; any other method on a known path is a 405 with
``Allow: POST`` (HEAD without a body).

load_model bodies are checked against the published request description shipped in
this package (``load_model_request.json``, :func:`published_request`), never against
modelsync's own manifest schema: required ``key, url, model_id, model_format,
model_category, model_visibility, model_name``, every field a non-null string, the
published enums (historical ``model_category`` values such as ``vae`` or ``lora`` are
refused, the strict reading, with a message naming the migration), ``model_image`` a URI,
no other field.

Envelopes (:mod:`modelsync.sandbox.reply`), by default the published ones:

- bad parameters -> HTTP 400 ``{"status": "error", "message": "...", "code": 400}``, the
  message one string naming every field in error;
- ``key`` missing, empty or wrong -> HTTP 401 ``{"status": "error", "message": "Invalid API
  key...", "code": 401}`` (checked before the fields);
- a body that is not JSON in UTF-8, not an object, nested too deeply, or over 1 MiB ->
  HTTP 400 with the same envelope; never a 500, never a dropped connection;
- with ``legacy_errors``, the older styles a client must also read: bad parameters in an
  HTTP **200** body with Laravel's object message
  (``{"status": "error", "message": {"url": ["The url field is required."]}}``), a missing
  key as HTTP 200 ``{"status": "error", "messege": "Invalid Api Key", "tip": "..."}``, a
  wrong key as 401, other errors without ``code``.

In both styles:

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

``request_log`` gets one JSON line per request received, with the key masked; a request
whose body its client cut off gets one ``client_gone`` line (:mod:`modelsync.sandbox.log`).

Modules: :mod:`~modelsync.sandbox.config` (SandboxConfig, SandboxError),
:mod:`~modelsync.sandbox.schema` (paths, the published request description and its check),
:mod:`~modelsync.sandbox.body` (reading a body, hostile ones included),
:mod:`~modelsync.sandbox.routes` (the endpoints, models held, counters),
:mod:`~modelsync.sandbox.faults`, :mod:`~modelsync.sandbox.log` (the request log),
:mod:`~modelsync.sandbox.reply` and :mod:`~modelsync.sandbox.server` (HTTP, start/stop,
serve_forever).
"""

from __future__ import annotations

from modelsync.sandbox.config import SandboxConfig, SandboxError
from modelsync.sandbox.schema import LOAD_MODEL_PATH, RequestDescription, published_request
from modelsync.sandbox.server import Sandbox, serve_forever

__all__ = [
    "LOAD_MODEL_PATH",
    "RequestDescription",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "published_request",
    "serve_forever",
]
