"""Steps 4 and 5 of the pipeline: the checks the schema cannot express, and ``${VAR}``."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from modelsync import redact
from modelsync.errors import Diagnostic
from modelsync.manifest.messages import _Reporter

INTERPOLATED_FIELDS = ("url", "model_image")
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
# A cheap filter before parsing a URL: only these can be one of the mistakes below.
_SUSPECT_URL = re.compile(r"civitai\.com/models/|/blob/|^http:", re.IGNORECASE)
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_semantics(report: _Reporter, data: dict[str, Any], broken: set[int]) -> list[Diagnostic]:
    """Step 4: what the schema cannot say. Returns warnings; errors go to the report."""
    warnings: list[Diagnostic] = []
    first_seen: dict[str, int] = {}
    for index, model in enumerate(data["models"]):
        path = ("models", index)
        model_id = model.get("model_id") if isinstance(model, dict) else None
        if type(model_id) is str:
            if model_id in first_seen:
                first = first_seen[model_id]
                first_line = report.loaded.position(("models", first, "model_id")).line
                report.add(
                    (*path, "model_id"),
                    f"duplicate model_id {model_id!r} (first at line {first_line}); "
                    "each model_id names one model on the account: rename or remove one",
                )
            else:
                first_seen[model_id] = index
        if index in broken:
            continue
        url = model["url"]
        if model["model_format"] == "diffusers" or not _SUSPECT_URL.search(url):
            continue
        parsed = urllib.parse.urlsplit(url)
        host = (parsed.hostname or "").lower()
        if host in ("civitai.com", "www.civitai.com") and re.match(r"/models/\d+", parsed.path):
            report.add(
                (*path, "url"),
                "this is a Civitai model page, not a download link; use "
                "https://civitai.com/api/download/models/<versionId> (the link of the page's "
                "Download button)",
            )
        elif host in ("huggingface.co", "www.huggingface.co") and "/blob/" in parsed.path:
            fixed = url.replace("/blob/", "/resolve/", 1)
            report.add(
                (*path, "url"),
                f"a Hugging Face /blob/ link is the HTML page, not the file; use /resolve/: "
                f"{fixed}",
            )
        elif parsed.scheme == "http":
            pos = report.loaded.position((*path, "url"))
            warnings.append(
                Diagnostic(
                    report.loaded.path,
                    pos.line,
                    pos.column,
                    f"{report.where((*path, 'url'))}: warning: http:// link; prefer https://",
                )
            )
    return warnings


def _interpolate(
    report: _Reporter, data: dict[str, Any], env: Mapping[str, str]
) -> list[dict[str, str]]:
    """Step 5: ${VAR} in url and model_image; every value used is a secret."""
    resolved: list[dict[str, str]] = []
    for index, model in enumerate(data["models"]):
        values: dict[str, str] = {}
        for name in INTERPOLATED_FIELDS:
            text = model.get(name)
            if not isinstance(text, str) or "$" not in text:
                continue
            result = _substitute(report, ("models", index, name), text, env)
            if result is not None and result != text:
                values[name] = result
        resolved.append(values)
    return resolved


def _substitute(
    report: _Reporter, path: tuple[str | int, ...], text: str, env: Mapping[str, str]
) -> str | None:
    ok = True

    def replace(match: re.Match[str]) -> str:
        nonlocal ok
        if match.group(0) == "$${":
            return "${"
        token = match.group(0)
        name = match.group(1)
        if not token.endswith("}"):
            report.add(path, "'${' without a closing '}'; write ${NAME}, or $${ for a literal ${")
            ok = False
            return token
        if not _VAR_NAME.match(name):
            report.add(
                path,
                f"${{{name}}} is not a variable name: use letters, digits and '_' "
                "(not starting with a digit), or $${ for a literal ${",
            )
            ok = False
            return token
        value = env.get(name)
        if value is None:
            report.add(
                path,
                f"environment variable {name} is not set; set it (export {name}=...) "
                "or remove ${" + name + "} from the " + str(path[-1]),
            )
            ok = False
            return token
        if value == "":
            report.add(
                path,
                f"environment variable {name} is set but empty (a CI secret that is not "
                "configured?); give it its value",
            )
            ok = False
            return token
        redact.register_secret(value)
        return value

    result = _VAR.sub(replace, text)
    return result if ok else None
