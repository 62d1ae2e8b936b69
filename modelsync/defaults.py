"""Every default of modelsync, in one place: the CLI, settings and the core read them here."""

from __future__ import annotations

DEFAULT_ENDPOINT = "https://stablediffusionapi.com/api/v3/load_model"
DEFAULT_API_KEY_ENV = "MODELSYNC_API_KEY"
ENDPOINT_ENV = "MODELSYNC_ENDPOINT"
STATE_ENV = "MODELSYNC_STATE"

# apply (DESIGN §4)
PARALLELISM = 4
MAX_ATTEMPTS = 5
MAX_RETRY_AFTER_S = 300.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
# 429s use no attempt (they are pacing); without a --deadline, this many per model end it.
MAX_RATE_LIMITED = 50
GRACE_S = 10.0
# The log level that -v shows: details (a network error's full text) between INFO and DEBUG.
LOG_VERBOSE = 15
LOCK_TIMEOUT_S = 0.0

# what a model gets when neither it nor the manifest's defaults say (DESIGN §1)
MODEL_DEFAULTS = {"revision": "fp16", "model_visibility": "private", "hf_upload": "no"}

# the sandbox (DESIGN §6)
SANDBOX_HOST = "127.0.0.1"
SANDBOX_KEY = "sandbox"
# The in-process sandbox listens on a new port each run; its state records this stable name.
SANDBOX_ENDPOINT = "sandbox://localhost/api/v3/load_model"
SANDBOX_PORT = 8765
SANDBOX_LOAD_SECONDS = 2.0
# apply --sandbox keeps models "loading" a little longer, so a second run can see them so.
SANDBOX_APPLY_LOAD_SECONDS = 5.0
SANDBOX_MAX_QUEUED = 10
SANDBOX_RETRY_AFTER_S = 1
