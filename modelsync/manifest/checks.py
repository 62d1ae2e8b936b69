"""Steps 4 and 5 of the pipeline: the checks the schema cannot express, and ``${VAR}``."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from functools import cache
from typing import Any

from modelsync import redact
from modelsync.manifest.messages import _Reporter
from modelsync.manifest.schemafile import schema

INTERPOLATED_FIELDS = ("url", "model_image")
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The mistakes among file links: a Civitai model page, a Hugging Face /blob/ page.
_PAGE_LINK = re.compile(r"civitai\.com/models/|/blob/", re.IGNORECASE)
# The format a link names: the extension of its file, or Civitai's format= parameter.
_EXTENSION = re.compile(r"\.(safetensors|ckpt)\Z", re.IGNORECASE)
_CIVITAI_FORMAT = re.compile(
    r"^https?://(?:www\.)?civitai\.com/[^?#]*\?(?:[^#]*&)?format=(SafeTensor|PickleTensor)(?:[&#]|\Z)",
    re.IGNORECASE,
)
_FORMAT_NAMED = {"safetensors": "safetensors", "ckpt": "ckpt"}
_FORMAT_NAMED |= {"safetensor": "safetensors", "pickletensor": "ckpt"}
_EXTENSION_OF = {"safetensors": ".safetensors", "ckpt": ".ckpt"}
_CIVITAI_NAME_OF = {"safetensors": "SafeTensor", "ckpt": "PickleTensor"}


@cache
def _deprecated_categories() -> dict[str, str]:
    """Deprecated model_category values and their warnings, from the schema (one source)."""
    spec = schema()["$defs"]["model"]["properties"]["model_category"]
    return {
        branch["const"]: branch["deprecationMessage"]
        for branch in spec.get("anyOf", ())
        if branch.get("deprecated")
    }


def _check_semantics(report: _Reporter, data: dict[str, Any], broken: set[int]) -> None:
    """Step 4: what the schema cannot say; errors and warnings go to the report."""
    first_seen: dict[str, int] = {}
    deprecated = _deprecated_categories()
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
        category = model["model_category"]
        if category in deprecated:
            report.warn((*path, "model_category"), deprecated[category])
        if model["model_format"] != "diffusers":
            _check_url(report, (*path, "url"), model["url"], model["model_format"])


def _check_url(report: _Reporter, path: tuple[str | int, ...], url: str, fmt: str) -> None:
    """The mistakes and suspicious forms of a file link (model_format safetensors, ckpt)."""
    if "://" not in url:  # the schema let it through as a repo id: namespace/name
        report.warn(
            path,
            f"{url!r} is a Hugging Face repo id, but with model_format {fmt} the service "
            "expects a file link; use model_format: diffusers, or a /resolve/ link to the "
            f"file: https://huggingface.co/{url}/resolve/main/<file>{_EXTENSION_OF[fmt]}",
        )
        return
    if url.startswith("http://"):
        report.warn(path, "http:// link; prefer https://")
    if _PAGE_LINK.search(url):
        _check_page_link(report, path, url)
    if url.count("?") > 1 and url.split("#", 1)[0].count("?") > 1:
        _check_second_question_mark(report, path, url)
    _check_named_format(report, path, url, fmt)


def _check_page_link(report: _Reporter, path: tuple[str | int, ...], url: str) -> None:
    """Errors: a Civitai model page or a Hugging Face /blob/ page is not the file."""
    parsed = urllib.parse.urlsplit(url)
    host = (parsed.hostname or "").lower()
    if host in ("civitai.com", "www.civitai.com") and re.match(r"/models/\d+", parsed.path):
        report.add(
            path,
            "this is a Civitai model page, not a download link; use "
            "https://civitai.com/api/download/models/<versionId> (the link of the page's "
            "Download button)",
        )
    elif host in ("huggingface.co", "www.huggingface.co") and "/blob/" in parsed.path:
        fixed = url.replace("/blob/", "/resolve/", 1)
        report.add(
            path,
            f"a Hugging Face /blob/ link is the HTML page, not the file; use /resolve/: {fixed}",
        )


def _check_second_question_mark(report: _Reporter, path: tuple[str | int, ...], url: str) -> None:
    """A warning: after a second '?', the rest up to the next '&' is part of a value.

    ``...&fp=fp16?token=${CIVITAI_TOKEN}`` sends fp=``fp16?token=...`` and no token.
    The parameter before is shown as written (a ${VAR} as its name); the glued one's
    value never is.
    """
    before, after = url.split("#", 1)[0].split("?", 2)[1:]
    last = before.rsplit("&", 1)[-1]
    of = f"the value of {last.partition('=')[0]}" if "=" in last else repr(last)
    glued = after.split("&", 1)[0]
    if not glued:
        report.warn(
            path, f"a second '?' in the url ({last}?): it is read as part of {of}; remove it"
        )
        return
    name, has_value, _ = glued.partition("=")
    shown = f"{name}=..." if has_value else name
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    server = "Civitai" if host in ("civitai.com", "www.civitai.com") else "the server"
    report.warn(
        path,
        f"a second '?' in the url ({last}?{shown}): {server} reads {shown!r} as part of "
        f"{of}, so it never sees {name}; separate parameters with '&': {last}&{shown}",
    )


def _check_named_format(report: _Reporter, path: tuple[str | int, ...], url: str, fmt: str) -> None:
    """A warning: a .ckpt link with model_format safetensors, or the reverse."""
    file_path = url.split("?", 1)[0].split("#", 1)[0]
    found = _EXTENSION.search(file_path)
    if found is not None:
        named = _FORMAT_NAMED[found.group(1).lower()]
        if named != fmt:
            report.warn(
                path,
                f"the link is a {_EXTENSION_OF[named]} file but model_format is {fmt}; write "
                f"model_format: {named}, or link the {_EXTENSION_OF[fmt]} file",
            )
        return
    found = _CIVITAI_FORMAT.search(url) if "format=" in url else None
    if found is not None and _FORMAT_NAMED[found.group(1).lower()] != fmt:
        named = _FORMAT_NAMED[found.group(1).lower()]
        report.warn(
            path,
            f"the link asks Civitai for format={found.group(1)} (a {_EXTENSION_OF[named]} "
            f"file) but model_format is {fmt}; write model_format: {named}, or "
            f"format={_CIVITAI_NAME_OF[fmt]}",
        )


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
