"""Settings: what a command runs against, from its flags and the environment (no click here).

The CLI turns options into a :class:`Settings` and calls one command with it. Settings
resolve, in the documented order, the endpoint (``--endpoint``, ``MODELSYNC_ENDPOINT``,
``target.endpoint``, the default), the state (``--state``, ``MODELSYNC_STATE``, beside the
manifest) and the API key (``--api-key-file``, else the manifest's variable), and build
the state backend and the API client.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsync import defaults, redact
from modelsync.errors import AuthError
from modelsync.manifest import Manifest, load_manifest
from modelsync.plan import Selection, parse_selectors
from modelsync.store import StateBackend, open_state

if TYPE_CHECKING:
    from modelsync.api.modelslab import ModelsLab
    from modelsync.api.retry import RetryPolicy
    from modelsync.controls import Controls


_log = logging.getLogger(__name__)


def _warn_if_shared(path: str) -> None:
    """Warn when the key file is readable by its group or by others (the run goes on)."""
    if os.name != "posix":  # modes mean nothing there; ACLs are another story
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # it was just read: a race, and nothing to warn about
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        who = "others" if mode & stat.S_IROTH else "its group"
        fix = f"chmod 600 {shlex.quote(path)}"
        _log.warning("the API key file %s is readable by %s (mode %04o): %s", path, who, mode, fix)


def _retry_policy(options: Mapping[str, Any]) -> RetryPolicy | None:
    if not options:
        return None
    from modelsync.api.retry import RetryPolicy

    return RetryPolicy(**options)


@dataclass(frozen=True)
class ClientOptions:
    """How the API client talks: its retry policy and its timeouts."""

    # None: the default policy. Built only when a flag sets it: the retry module (and what
    # it imports) is apply's business, not validate's or plan's.
    retry: RetryPolicy | None = None
    connect_timeout: float = defaults.CONNECT_TIMEOUT_S
    read_timeout: float = defaults.READ_TIMEOUT_S


@dataclass(frozen=True)
class Settings:
    """One command's view of the world. Read-only; the manifest is loaded once, on demand."""

    manifest_path: str
    endpoint: str | None = None  # --endpoint
    state: str | None = None  # --state (a path or a URL)
    api_key_file: str | None = None
    selection: Selection = field(default_factory=Selection)
    lock_timeout: float = defaults.LOCK_TIMEOUT_S
    client: ClientOptions = field(default_factory=ClientOptions)
    command: str = "modelsync"  # the command line, to name a lock's holder
    strict: bool = False  # --strict: the manifest's warnings are errors
    skip_schema_creation: bool = False  # a DBA created a database state's tables
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @classmethod
    def from_options(
        cls, manifest_path: str, options: dict[str, Any], *, command: str = "modelsync"
    ) -> Settings:
        """Settings from a command's options, taking out of ``options`` those it knows.

        What is left (``--parallelism``, ``--report``...) is the command's own business.
        """
        retry: dict[str, Any] = {
            k: options.pop(k) for k in ("max_attempts", "max_retry_after") if k in options
        }
        selection = Selection(
            tuple(options.pop("only", ())),
            tuple(options.pop("exclude", ())),
            parse_selectors(options.pop("selector", ())),
        )
        fields = (
            "state",
            "endpoint",
            "api_key_file",
            "lock_timeout",
            "strict",
            "skip_schema_creation",
        )
        chosen = {k: options.pop(k) for k in fields if k in options}
        return cls(
            manifest_path,
            selection=selection,
            client=ClientOptions(_retry_policy(retry)),
            command=command,
            **chosen,
        )

    @functools.cached_property
    def manifest(self) -> Manifest:
        """The manifest, validated whole (ManifestError with every problem otherwise)."""
        return load_manifest(self.manifest_path, self.env, strict=self.strict)

    @property
    def target_endpoint(self) -> str:
        """The endpoint: --endpoint, MODELSYNC_ENDPOINT, target.endpoint, the default."""
        return (
            self.endpoint
            or self.env.get(defaults.ENDPOINT_ENV)
            or self.manifest.endpoint
            or defaults.DEFAULT_ENDPOINT
        )

    @property
    def state_location(self) -> str | None:
        """--state, else MODELSYNC_STATE; None means the default beside the manifest."""
        return self.state or self.env.get(defaults.STATE_ENV) or None

    def open_state(self, endpoint: str | None = None) -> StateBackend:
        """The state backend for this run (``endpoint``: what the state records)."""
        return open_state(
            self.state_location,
            manifest_path=self.manifest_path,
            endpoint=endpoint or self.target_endpoint,
            skip_schema_creation=self.skip_schema_creation,
        )

    def api_key(self) -> str:
        """The key from --api-key-file or the manifest's variable; never argv or the manifest."""
        if self.api_key_file:
            path = self.api_key_file
            try:
                key = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise AuthError(f"cannot read the API key file {path}: {why}") from None
            if not key:
                raise AuthError(f"the API key file {path} is empty")
            _warn_if_shared(path)
        else:
            name = self.manifest.api_key_env
            key = self.env.get(name, "").strip()
            if not key:
                raise AuthError(
                    f"no API key: the environment variable {name} is not set or empty "
                    f"(set it, e.g. from your CI secret store, or pass --api-key-file PATH); "
                    "nothing was sent"
                )
        redact.register_secret(key)
        return key

    def key_source(self) -> str:
        """Where the key comes from, in words (for the auth-failure message)."""
        if self.api_key_file:
            return f"the file {self.api_key_file} (--api-key-file)"
        return f"the environment variable {self.manifest.api_key_env}"

    def create_client(self, url: str, api_key: str, controls: Controls) -> ModelsLab:
        """The ModelsLab client for ``url``, paced by ``controls``."""
        from modelsync.api.modelslab import ModelsLab
        from modelsync.api.transport import Transport

        options = self.client
        transport = Transport(
            secret=api_key,
            pin_to=url,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            policy=options.retry,
            sleep=controls.backoffs.sleep,
            gate=controls.watched,
        )
        return ModelsLab(url, api_key, transport)
