"""The manifest pipeline (modelsync.manifest, modelsync.yamlio), mostly through ``validate``.

Every invalid manifest is checked by the exact stderr it produces and exit code 3, as a
user sees it: the message must name file:line:column, the model, what is wrong and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelsync import records
from modelsync.cli import main
from modelsync.errors import ManifestError
from modelsync.manifest import Manifest, load_manifest
from modelsync.manifest import load as manifest_module
from modelsync.records import SENT_FIELDS, ModelSpec

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "comfyui-model-list.json"
CANARY = "CANARY-7f3a9c2e-civitai-token"


def doc(text: str) -> str:
    """A YAML document written indented in the test, as the file holds it."""
    return textwrap.dedent(text).lstrip("\n")


def run_validate(
    capsys: pytest.CaptureFixture[str], *paths: str | Path
) -> tuple[int, list[str], list[str]]:
    """``modelsync validate PATHS``: exit code, stdout lines, stderr lines."""
    code = main(["validate", *(str(p) for p in paths)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def invalid(name: str, lines: list[str]) -> list[str]:
    """The full stderr of ``validate`` for one invalid file with these diagnostics."""
    count = f"{len(lines)} problem" + ("" if len(lines) == 1 else "s")
    return [*lines, f"{name}: invalid ({count})"]


# One valid model; most cases below change one thing in it. Its lines are 3 to 6.
HEAD = "version: 1\nmodels:\n"
MODEL = """\
  - model_id: majicmix
    url: https://civitai.com/api/download/models/132760
    model_format: safetensors
    model_category: stable_diffusion
"""
M0 = "m.yaml:{}:5: models[0] (id 'majicmix'): "


def with_model(extra: str = "", **fields: str) -> str:
    """The valid manifest with some fields replaced and ``extra`` lines added to the model."""
    text = MODEL
    for name, value in fields.items():
        line = re.compile(rf"^(\s*-? *){name}: .*$", flags=re.M)
        written = f"{name}: {value}"
        text, count = line.subn(lambda m, written=written: m.group(1) + written, text)
        assert count == 1, f"MODEL has no field {name}"
    return HEAD + text + textwrap.indent(doc(extra), "    ")


def at(line: int, message: str) -> str:
    return M0.format(line) + message


REPO_ID_FORM = (
    "'namespace/name' with ASCII letters, digits, '-', '_', '.'; each part 1-96 characters, "
    "no leading or trailing '-' or '.', no '--' or '..', not ending in '.git'"
)
REPO_ID_RULES = f"is not a valid Hugging Face repo id: {REPO_ID_FORM}"
MODEL_ID_RULES = (
    "is not a valid model_id: 1-100 characters, letters, digits, '.', '_', '-', "
    "starting with a letter or digit"
)
KEY_MESSAGE = (
    "key: the API key must not be in the manifest: it is a secret; put it in the environment "
    "variable MODELSYNC_API_KEY (or pass --api-key-file) and remove this line"
)
MODEL_FIELDS = (
    "model_id, url, model_format, model_category, model_subcategory, model_name, model_image, "
    "revision, model_visibility, force_load, hf_upload, labels"
)
BOMB_4 = doc(
    """
    version: 1
    models:
      - &a [x, x, x, x, x, x, x, x, x, x]
      - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
    """
)

# (manifest text, environment, expected diagnostics without the summary line), by id
CASES: list[Any] = [
    pytest.param(
        with_model("model_category: flux"),
        {},
        [
            at(
                7,
                "duplicate key 'model_category' (first at line 6); "
                "YAML would silently keep only the last one: remove one",
            )
        ],
        id="duplicate-key",
    ),
    pytest.param(
        HEAD + MODEL + MODEL.replace("132760", "1"),
        {},
        [
            "m.yaml:7:5: models[1] (id 'majicmix'): model_id: duplicate model_id 'majicmix' "
            "(first at line 3); each model_id names one model on the account: "
            "rename or remove one"
        ],
        id="duplicate-model-id",
    ),
    pytest.param(
        with_model("model_nme: MajicMix"),
        {},
        [
            at(
                7,
                "model_nme: unknown key 'model_nme' (did you mean 'model_name'?); "
                f"allowed here: {MODEL_FIELDS}",
            )
        ],
        id="unknown-key-near-miss",
    ),
    pytest.param(
        with_model(model_format="safetensor"),
        {},
        [
            at(
                5,
                "model_format: 'safetensor' is not one of 'diffusers', 'safetensors', 'ckpt' "
                "(did you mean 'safetensors'?)",
            )
        ],
        id="enum-did-you-mean",
    ),
    pytest.param(
        with_model("model_visibility: Private"),
        {},
        [
            at(
                7,
                "model_visibility: 'Private' is not one of 'private', 'public' "
                "(did you mean 'private'?)",
            )
        ],
        id="enum-case",
    ),
    pytest.param(
        with_model("revision: fp8"),
        {},
        [at(7, "revision: 'fp8' is not one of 'fp16', 'fp32'")],
        id="enum-no-near-miss",
    ),
    pytest.param(
        with_model("model_visibility: yes"),
        {},
        [at(7, "model_visibility: yes is not one of 'private', 'public'")],
        id="enum-boolean-shown-as-written",
    ),
    pytest.param(
        with_model("revision:"),
        {},
        [at(7, "revision: an empty value is not one of 'fp16', 'fp32'")],
        id="enum-empty",
    ),
    pytest.param(
        HEAD + MODEL.replace("    model_category: stable_diffusion\n", ""),
        {},
        [
            at(
                3,
                "missing required field 'model_category'; add 'model_category:' with one of "
                "'stable_diffusion', 'stable_diffusion_xl', 'flux', 'z_image'",
            )
        ],
        id="missing-required",
    ),
    pytest.param(
        HEAD + MODEL.replace("    url: https://civitai.com/api/download/models/132760\n", ""),
        {},
        [at(3, "missing required field 'url'; add 'url:'")],
        id="missing-url",
    ),
    pytest.param(
        with_model("key: sk-0123456789"),
        {},
        [at(7, KEY_MESSAGE)],
        id="key-in-model",
    ),
    pytest.param(
        "key: sk-0123456789\n" + HEAD + MODEL,
        {},
        [f"m.yaml:1:1: {KEY_MESSAGE}"],
        id="key-at-top",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="https://example.com/model.safetensors"),
        {},
        [
            at(
                4,
                "url: with model_format diffusers, url must be a Hugging Face repo id like "
                "'org/name', not a link; for a single .safetensors/.ckpt file use "
                "model_format: safetensors or ckpt",
            )
        ],
        id="diffusers-with-url",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="https://huggingface.co/org/name"),
        {},
        [
            at(
                4,
                "url: with model_format diffusers, url is a Hugging Face repo id, not a link: "
                "write url: org/name",
            )
        ],
        id="diffusers-with-full-hf-link",
    ),
    pytest.param(
        with_model(url="org/my--model"),
        {},
        [
            at(
                4,
                "url: with model_format safetensors, url must be an https:// link to the file; "
                f"'org/my--model' is not a valid Hugging Face repo id either: {REPO_ID_FORM}",
            )
        ],
        id="safetensors-with-bad-repo-id",
    ),
    pytest.param(
        with_model(url="example.com/files/model.safetensors"),
        {},
        [at(4, "url: with model_format safetensors, url must be an https:// link to the file")],
        id="safetensors-link-without-scheme",
    ),
    pytest.param(
        with_model(url="example.com/model.safetensors"),
        {},
        [at(4, "url: with model_format safetensors, url must be an https:// link to the file")],
        id="safetensors-link-without-scheme-like-a-repo-id",
    ),
    pytest.param(
        with_model(url="model.ckpt", model_format="ckpt"),
        {},
        [at(4, "url: with model_format ckpt, url must be an https:// link to the file")],
        id="ckpt-bare-file-name",
    ),
    pytest.param(
        with_model(url="https://civitai.com/models/4201/realistic-vision"),
        {},
        [
            at(
                4,
                "url: this is a Civitai model page, not a download link; use "
                "https://civitai.com/api/download/models/<versionId> "
                "(the link of the page's Download button)",
            )
        ],
        id="civitai-model-page",
    ),
    pytest.param(
        with_model(url="https://huggingface.co/org/name/blob/main/model.safetensors"),
        {},
        [
            at(
                4,
                "url: a Hugging Face /blob/ link is the HTML page, not the file; use /resolve/: "
                "https://huggingface.co/org/name/resolve/main/model.safetensors",
            )
        ],
        id="huggingface-blob-link",
    ),
    pytest.param(
        with_model(url="ftp://example.com/model.ckpt"),
        {},
        [
            at(
                4,
                "url: the ftp:// scheme is not supported: the service downloads over https; "
                "use an https:// link",
            )
        ],
        id="ftp-url",
    ),
    pytest.param(
        with_model(url="https://civitai.com/api/download/models/1?token=${CIVITAI_TOKEN}"),
        {},
        [
            at(
                4,
                "url: environment variable CIVITAI_TOKEN is not set; set it "
                "(export CIVITAI_TOKEN=...) or remove ${CIVITAI_TOKEN} from the url",
            )
        ],
        id="unset-variable",
    ),
    pytest.param(
        with_model(url="https://civitai.com/api/download/models/1?token=${CIVITAI_TOKEN}"),
        {"CIVITAI_TOKEN": ""},
        [
            at(
                4,
                "url: environment variable CIVITAI_TOKEN is set but empty "
                "(a CI secret that is not configured?); give it its value",
            )
        ],
        id="empty-variable",
    ),
    pytest.param(
        with_model(url="https://civitai.com/api/download/models/1?token=${bad-name}"),
        {},
        [
            at(
                4,
                "url: ${bad-name} is not a variable name: use letters, digits and '_' "
                "(not starting with a digit), or $${ for a literal ${",
            )
        ],
        id="bad-variable-name",
    ),
    pytest.param(
        with_model(url="https://civitai.com/api/download/models/1?token=${CIVITAI_TOKEN"),
        {"CIVITAI_TOKEN": "abcdef"},
        [at(4, "url: '${' without a closing '}'; write ${NAME}, or $${ for a literal ${")],
        id="unclosed-variable",
    ),
    pytest.param(
        BOMB_4,
        {},
        [
            "m.yaml:5:5: aliases would expand the document to more than 180 nodes, over 10x "
            "its 18 nodes (an alias bomb); write the values out or use fewer nested aliases"
        ],
        id="alias-bomb",
    ),
    pytest.param(
        "version: 1\nmodels: " + "[" * 200 + "]" * 200 + "\n",
        {},
        [
            "m.yaml:2:72: nesting is deeper than 64 levels (a manifest needs 5): "
            "remove the extra brackets or indentation"
        ],
        id="nesting-200-flow",
    ),
    pytest.param(
        "version: 1\nmodels:\n" + "".join("  " * i + "-\n" for i in range(1, 201)),
        {},
        [
            "m.yaml:66:129: nesting is deeper than 64 levels (a manifest needs 5): "
            "remove the extra brackets or indentation"
        ],
        id="nesting-200-block",
    ),
    pytest.param(
        with_model("model_name: !!python/object/apply:os.system ['echo hi']"),
        {},
        [
            at(7, "model_name: must be text, not a list"),
            "m.yaml:7:17: models[0] (id 'majicmix'): model_name: the tag "
            "!!python/object/apply:os.system is not allowed: a manifest holds plain strings, "
            "numbers, lists and mappings; remove the tag",
        ],
        id="python-object-tag",
    ),
    pytest.param(
        with_model(model_category="!vault stable_diffusion"),
        {},
        [
            "m.yaml:6:21: models[0] (id 'majicmix'): model_category: the tag !vault is not "
            "allowed: a manifest holds plain strings, numbers, lists and mappings; "
            "remove the tag",
        ],
        id="custom-tag",
    ),
    pytest.param(
        HEAD + MODEL + "---\n" + HEAD + MODEL,
        {},
        [
            "m.yaml:7:1: the file holds more than one YAML document ('---'); a manifest is "
            "exactly one document: remove the extra '---' or split the file"
        ],
        id="two-documents",
    ),
    pytest.param(
        "",
        {},
        ["m.yaml: the file is empty; a manifest needs at least 'version: 1' and 'models:'"],
        id="empty-file",
    ),
    pytest.param(
        "\n  \n\t\n",
        {},
        ["m.yaml: the file is empty; a manifest needs at least 'version: 1' and 'models:'"],
        id="blank-file",
    ),
    pytest.param(
        "# the models of team X\n\n# (none yet)\n",
        {},
        [
            "m.yaml: the file has no YAML document (only comments or blanks); "
            "a manifest needs at least 'version: 1' and 'models:'"
        ],
        id="comments-only",
    ),
    pytest.param(
        with_model("model_name: 1.10"),
        {},
        [
            at(
                7,
                "model_name: 1.10 is read by YAML as a number, not text; "
                'quote it: model_name: "1.10"',
            )
        ],
        id="model-name-number",
    ),
    pytest.param(
        with_model(model_id="2024-01-01"),
        {},
        [
            "m.yaml:3:5: models[0]: model_id: 2024-01-01 is read by YAML as a date, not text; "
            'quote it: model_id: "2024-01-01"'
        ],
        id="model-id-date",
    ),
    pytest.param(
        with_model(model_id="no"),
        {},
        [
            "m.yaml:3:5: models[0]: model_id: no is read by YAML as a boolean, not text; "
            'quote it: model_id: "no"'
        ],
        id="model-id-no",
    ),
    pytest.param(
        with_model(model_id="'majic mix'"),
        {},
        [f"m.yaml:3:5: models[0] (id 'majic mix'): model_id: 'majic mix' {MODEL_ID_RULES}"],
        id="model-id-space",
    ),
    pytest.param(
        with_model(model_id="-majicmix"),
        {},
        [f"m.yaml:3:5: models[0] (id '-majicmix'): model_id: '-majicmix' {MODEL_ID_RULES}"],
        id="model-id-leading-dash",
    ),
    pytest.param(
        with_model(url="'https://example.com/my model.safetensors'"),
        {},
        [at(4, "url: contains whitespace; percent-encode spaces as %20")],
        id="url-whitespace",
    ),
    pytest.param(
        with_model(url="https://example.com/" + "a" * 2029 + ".safetensors"),
        {},
        [
            at(
                4,
                "url: is 2061 characters long, more than the 2048 the service accepts; "
                "use a shorter link (drop tracking parameters)",
            )
        ],
        id="url-too-long",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="org/my--model"),
        {},
        [at(4, f"url: 'org/my--model' {REPO_ID_RULES}")],
        id="repo-id-double-dash",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="org/model.git"),
        {},
        [at(4, f"url: 'org/model.git' {REPO_ID_RULES}")],
        id="repo-id-dot-git",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="org/my..model"),
        {},
        [at(4, f"url: 'org/my..model' {REPO_ID_RULES}")],
        id="repo-id-double-dot",
    ),
    pytest.param(
        with_model(model_format="diffusers", url="org/-model"),
        {},
        [at(4, f"url: 'org/-model' {REPO_ID_RULES}")],
        id="repo-id-leading-dash",
    ),
    pytest.param(
        "version: 2\nmodels:\n" + MODEL,
        {},
        ["m.yaml:1:1: version: version 2 is not supported; this modelsync reads version: 1"],
        id="version-2",
    ),
    pytest.param(
        "version: '1'\nmodels:\n" + MODEL,
        {},
        ["m.yaml:1:1: version: version is the text '1'; write the number: version: 1"],
        id="version-quoted",
    ),
    pytest.param(
        "models:\n" + MODEL,
        {},
        ["m.yaml:1:1: missing required field 'version'; add 'version: 1' at the top"],
        id="missing-version",
    ),
    pytest.param(
        "version: 1\n",
        {},
        ["m.yaml:1:1: missing required field 'models'; add 'models:' with a list of models"],
        id="missing-models",
    ),
    pytest.param(
        "version: 1\nmodels:\n  majicmix:\n    url: https://example.com/m.safetensors\n",
        {},
        [
            "m.yaml:2:1: models: must be a list of models, each starting with "
            "'- model_id: ...', not a mapping"
        ],
        id="models-not-a-list",
    ),
    pytest.param(
        "version: 1\nmodels:\n",
        {},
        [
            "m.yaml:2:1: models: must be a list of models, each starting with "
            "'- model_id: ...', not null (empty)"
        ],
        id="models-empty-value",
    ),
    pytest.param(
        "version: 1\nmodels:\n  - majicmix\n",
        {},
        [
            "m.yaml:3:5: models[0]: a model must be a mapping of its fields (model_id, url, "
            "model_format, model_category...), not text"
        ],
        id="model-not-a-mapping",
    ),
    pytest.param(
        "- version: 1\n- models: []\n",
        {},
        ["m.yaml:1:1: the manifest must be a mapping with 'version: 1' and 'models:', not a list"],
        id="top-level-list",
    ),
    pytest.param(
        "version: 1\nmodel:\n" + MODEL,
        {},
        [
            "m.yaml:1:1: missing required field 'models'; add 'models:' with a list of models",
            "m.yaml:2:1: model: unknown key 'model' (did you mean 'models'?); "
            "allowed here: version, target, defaults, models",
        ],
        id="top-level-key-typo",
    ),
    pytest.param(
        with_model("labels: {team: 1}"),
        {},
        [
            "m.yaml:7:14: models[0] (id 'majicmix'): labels.team: 1 is read by YAML as a "
            'number, not text; quote it: team: "1"'
        ],
        id="label-value-number",
    ),
    pytest.param(
        with_model("labels: {yes: a, 1.10: b}"),
        {},
        [
            "m.yaml:7:14: models[0] (id 'majicmix'): labels: the key yes is read by YAML as a "
            'boolean, not text; quote it: "yes":',
            "m.yaml:7:22: models[0] (id 'majicmix'): labels: the key 1.10 is read by YAML as a "
            'number, not text; quote it: "1.10":',
        ],
        id="label-name-typed-by-yaml",
    ),
    pytest.param(
        with_model("labels:\n  team: a\n  -tier: gold"),
        {},
        [
            "m.yaml:9:7: models[0] (id 'majicmix'): labels: label name '-tier' is not "
            "allowed: use letters, digits, '.', '_', '-', '/' (at most 63 characters, "
            "starting with a letter or digit)"
        ],
        id="label-name",
    ),
    pytest.param(
        with_model("labels: [portraits]"),
        {},
        [
            at(
                7,
                "labels: must be a mapping of label names to text, like labels: "
                "{team: portraits}, not a list",
            )
        ],
        id="labels-not-a-mapping",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  visibility: private\nmodels:\n" + MODEL,
        {},
        [
            "m.yaml:3:3: defaults.visibility: unknown key 'visibility' "
            "(did you mean 'model_visibility'?); allowed here: model_subcategory, revision, "
            "model_visibility, force_load, hf_upload, labels"
        ],
        id="unknown-key-in-defaults",
    ),
    pytest.param(
        "version: 1\ntarget:\n  endpont: https://example.com\nmodels:\n" + MODEL,
        {},
        [
            "m.yaml:3:3: target.endpont: unknown key 'endpont' (did you mean 'endpoint'?); "
            "allowed here: endpoint, api_key_env"
        ],
        id="unknown-key-in-target",
    ),
    pytest.param(
        "version: 1\ntarget:\n  key: sk-0123456789\nmodels:\n" + MODEL,
        {},
        [f"m.yaml:3:3: target.{KEY_MESSAGE}"],
        id="key-in-target",
    ),
    pytest.param(
        "version: 1\ntarget:\n  endpoint: stablediffusionapi.com\nmodels:\n" + MODEL,
        {},
        [
            "m.yaml:3:3: target.endpoint: 'stablediffusionapi.com' must be an http(s):// URL, "
            "like https://stablediffusionapi.com/api/v3/load_model"
        ],
        id="endpoint-not-a-url",
    ),
    pytest.param(
        "version: 1\ntarget:\n  api_key_env: MY-KEY\nmodels:\n" + MODEL,
        {},
        [
            "m.yaml:3:3: target.api_key_env: 'MY-KEY' is not an environment variable name: "
            "use letters, digits and '_', like MODELSYNC_API_KEY"
        ],
        id="api-key-env-name",
    ),
    pytest.param(
        with_model("force_load: maybe"),
        {},
        [at(7, "force_load: 'maybe' is not yes or no; write yes or no")],
        id="force-load-maybe",
    ),
    pytest.param(
        with_model("hf_upload: 'true'"),
        {},
        [at(7, "hf_upload: 'true' is not yes or no; write yes or no")],
        id="hf-upload-quoted-true",
    ),
    pytest.param(
        with_model("force_load:"),
        {},
        [at(7, "force_load: an empty value is not yes or no; write yes or no")],
        id="force-load-empty",
    ),
    pytest.param(
        HEAD + MODEL.replace("    url", "\turl"),
        {},
        [
            "m.yaml:4:1: YAML syntax error: a tab character; YAML indents with spaces only: "
            "replace the tab with spaces"
        ],
        id="tab-indentation",
    ),
    pytest.param(
        HEAD + MODEL.replace("    url", "      url"),
        {},
        [
            "m.yaml:4:10: YAML syntax error: a ':' where no key can start: quote a value "
            "that contains ': ', or fix the indentation of this line"
        ],
        id="indented-too-far",
    ),
    pytest.param(
        HEAD + MODEL.replace("    model_format", "   model_format"),
        {},
        [
            "m.yaml:5:4: YAML syntax error: this line is not indented like the lines above "
            "it: indent the fields of one mapping by the same number of spaces"
        ],
        id="indented-too-little",
    ),
    pytest.param(
        with_model("model_name: MajicMix: realistic"),
        {},
        [
            "m.yaml:7:25: YAML syntax error: a ':' where no key can start: quote a value "
            "that contains ': ', or fix the indentation of this line"
        ],
        id="unquoted-colon",
    ),
    pytest.param(
        with_model('model_name: "MajicMix'),
        {},
        [
            "m.yaml:7:17: YAML syntax error: a quoted value or bracket is not closed before "
            "the end of the file: close it"
        ],
        id="unclosed-quote",
    ),
    pytest.param(
        with_model("labels: {team: portraits"),
        {},
        [
            "m.yaml:7:13: YAML syntax error: a [list] or {mapping} that is not closed, or "
            "items not separated by ',': close the bracket, or quote a value that contains "
            "',' or ':'"
        ],
        id="unclosed-bracket",
    ),
    pytest.param(
        with_model("model_name: @home"),
        {},
        ["m.yaml:7:17: YAML syntax error: a value cannot start with '@': quote the value ('@...')"],
        id="reserved-character",
    ),
    pytest.param(
        with_model("model_name: *name"),
        {},
        [
            "m.yaml:7:17: YAML syntax error: an alias (*name) with no anchor (&name) before "
            "it: define the anchor first, or fix the name"
        ],
        id="undefined-alias",
    ),
    pytest.param(
        with_model("labels: &x {team: a}\nmodel_subcategory: &x lora"),
        {},
        [
            "m.yaml:8:24: YAML syntax error: the same anchor (&name) is defined twice: "
            "rename one (first at line 7)"
        ],
        id="duplicate-anchor",
    ),
    pytest.param(
        with_model('model_name: "C:\\qmodels"'),
        {},
        [
            "m.yaml:7:20: YAML syntax error: an unknown backslash escape in a double-quoted "
            "value: use single quotes, or write the backslash twice"
        ],
        id="unknown-escape",
    ),
    pytest.param(
        HEAD + MODEL.replace("model_format: safetensors", "model_format safetensors"),
        {},
        [
            "m.yaml:5:5: YAML syntax error: a line that is not 'key: value' (or a quote or "
            "bracket left open above it): write 'key: value'"
        ],
        id="missing-colon",
    ),
    pytest.param(
        "%YAML 1.3\n---\n" + HEAD + MODEL,
        {},
        [
            "m.yaml:1:1: YAML syntax error: a line that starts with '%' is a YAML directive: "
            "remove it, or quote the value"
        ],
        id="yaml-directive",
    ),
    pytest.param(
        with_model("labels: {team: *}"),
        {},
        [
            "m.yaml:7:21: YAML syntax error: '*' and '&' start an alias or an anchor: "
            "quote a value that starts with them"
        ],
        id="bare-alias-character",
    ),
    pytest.param(
        "version: 1\ntarget:\n  api_key_env: TEAM_KEY\nmodels:\n" + MODEL + "    key: sk-1234\n",
        {},
        [
            "m.yaml:9:5: models[0] (id 'majicmix'): key: the API key must not be in the "
            "manifest: it is a secret; put it in the environment variable TEAM_KEY "
            "(or pass --api-key-file) and remove this line"
        ],
        id="key-names-the-manifest-variable",
    ),
    pytest.param(
        "version: 1\ntarget: 1\nmodels:\n" + MODEL,
        {},
        ["m.yaml:2:1: target: must be a mapping of 'name: value' lines, not a number"],
        id="target-not-a-mapping",
    ),
    pytest.param(
        with_model(url="example.com/files/m.safetensors"),
        {},
        [at(4, "url: with model_format safetensors, url must be an https:// link to the file")],
        id="url-without-scheme",
    ),
    pytest.param(
        with_model("model_name:"),
        {},
        [at(7, "model_name: is empty; give it a value")],
        id="text-field-empty",
    ),
    pytest.param(
        with_model("labels: {team: }"),
        {},
        ["m.yaml:7:14: models[0] (id 'majicmix'): labels.team: is empty; give it a value"],
        id="label-value-empty",
    ),
    pytest.param(
        doc(
            """
            version: 1
            models:
              - &base
                model_id: a
                url: https://example.com/a.safetensors
                model_format: safetensors
                model_category: stable_diffusion_xl
                model_subcategory: lora
                revision: fp8
              - <<: *base
                model_id: b
            """
        ),
        {},
        [
            "m.yaml:9:5: models[0] (id 'a'): revision: 'fp8' is not one of 'fp16', 'fp32'",
            "m.yaml:9:5: models[1] (id 'b'): revision: 'fp8' is not one of 'fp16', 'fp32'",
        ],
        id="error-through-a-merge-key",
    ),
    pytest.param(
        with_model("labels: !!set {team}"),
        {},
        [
            "m.yaml:7:13: models[0] (id 'majicmix'): labels: the tag !!set is not allowed: a "
            "manifest holds plain strings, numbers, lists and mappings; remove the tag",
            "m.yaml:7:20: models[0] (id 'majicmix'): labels.team: is empty; give it a value",
        ],
        id="set-tag",
    ),
    pytest.param(
        with_model("model_name: <<"),
        {},
        [
            "m.yaml:7:17: models[0] (id 'majicmix'): model_name: '<<' (merge) is only allowed "
            "as a mapping key; quote it to mean the text"
        ],
        id="merge-key-as-value",
    ),
    pytest.param(
        "version: 1\nmodels: " + "[" * 2000 + "]" * 2000 + "\n",
        {},
        [
            "m.yaml:2:1008: nesting is deeper than 64 levels (a manifest needs 5): "
            "remove the extra brackets or indentation"
        ],
        id="nesting-2000-parser-limit",
    ),
    pytest.param(
        with_model("model_name: MajicMix\x07"),
        {},
        [
            "m.yaml:7:25: the control character U+0007 is not allowed in YAML; delete it "
            "(an editor that shows invisible characters helps)"
        ],
        id="control-character",
    ),
    pytest.param(
        with_model("model_name: " + "n" * 201),
        {},
        [at(7, "model_name: is 201 characters long, more than 200; shorten it")],
        id="model-name-too-long",
    ),
    pytest.param(
        with_model("model_name: ''"),
        {},
        [at(7, "model_name: must not be empty; give it a value or remove the line")],
        id="model-name-empty",
    ),
    pytest.param(
        with_model("model_image: cdn.example.com/x.png"),
        {},
        [
            at(
                7,
                "model_image: 'cdn.example.com/x.png' must be an http(s):// URL without whitespace",
            )
        ],
        id="model-image-not-a-url",
    ),
    pytest.param(
        with_model("<<: 1"),
        {},
        [
            "m.yaml:7:9: models[0] (id 'majicmix'): '<<' merges a mapping (or a list of "
            "mappings) only: write '<<: *name' where '&name' anchors a mapping"
        ],
        id="merge-of-a-scalar",
    ),
    pytest.param(
        with_model("? [a, b]\n: c"),
        {},
        [
            "m.yaml:7:7: models[0] (id 'majicmix'): a mapping key must be plain text, not a "
            "list or mapping; write 'name: value'"
        ],
        id="list-as-key",
    ),
]


@pytest.mark.parametrize(("text", "env", "expected"), CASES)
def test_validate_invalid_manifest(
    text: str,
    env: dict[str, str],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out, err) == (3, [], invalid("m.yaml", expected))


def _write_bytes(data: bytes) -> Callable[[Path], str]:
    def make(tmp_path: Path) -> str:
        (tmp_path / "m.yaml").write_bytes(data)
        return "m.yaml"

    return make


def _directory(tmp_path: Path) -> str:
    (tmp_path / "manifests").mkdir()
    return "manifests"


def _over_64_mib(tmp_path: Path) -> str:
    with (tmp_path / "m.yaml").open("wb") as handle:
        handle.write(b"version: 1\nmodels: []\n")
        handle.truncate(64 * 1024 * 1024 + 1)  # sparse: no 64 MiB written to disk
    return "m.yaml"


FILE_CASES: list[Any] = [
    pytest.param(
        _write_bytes(b"version: 1\nmodels:\n  - model_id: caf\xe9\n"),
        ["m.yaml:3:18: the file is not valid UTF-8 (byte 0xe9); save it as UTF-8"],
        id="invalid-utf8",
    ),
    pytest.param(
        _write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        [
            "m.yaml: this is a binary file (it holds NUL bytes), not a YAML manifest; "
            "give the path of the manifest"
        ],
        id="binary-file",
    ),
    pytest.param(
        _over_64_mib,
        [
            "m.yaml: the file is 67108865 bytes, more than the 64 MiB a manifest may be; "
            "split it into several manifests"
        ],
        id="over-64-mib",
    ),
    pytest.param(
        _directory,
        ["manifests: not a regular file; give the path of a YAML manifest"],
        id="directory",
    ),
    pytest.param(
        lambda tmp_path: "missing.yaml",
        ["missing.yaml: no such file; check the path"],
        id="missing-file",
    ),
]


@pytest.mark.parametrize(("make", "expected"), FILE_CASES)
def test_validate_unreadable_file(
    make: Callable[[Path], str],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    code, out, err = run_validate(capsys, path)
    assert (code, out, err) == (3, [], invalid(path, expected))


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(FILE_CASES) >= 40


def test_validate_reports_every_error_sorted_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Errors of the YAML step (duplicate key), the schema and the checks, in three models,
    # written so that the order found differs from the order in the file.
    text = doc(
        """
        version: 1
        defaults:
          revison: fp16
        models:
          - model_id: portrait
            url: https://civitai.com/models/4201
            model_format: safetensors
            model_category: stable_diffusion
          - model_id: sdxl
            url: https://huggingface.co/org/sdxl
            model_format: diffusers
            model_category: sdxl
            model_category: stable_diffusion_xl
          - model_id: portrait
            url: https://huggingface.co/org/vae/blob/main/vae.safetensors
            model_format: safetensors
            model_category: stable_diffusion_xl
        """
    )
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert code == 3
    assert out == []
    assert err == invalid(
        "m.yaml",
        [
            "m.yaml:3:3: defaults.revison: unknown key 'revison' (did you mean 'revision'?); "
            "allowed here: model_subcategory, revision, model_visibility, force_load, "
            "hf_upload, labels",
            "m.yaml:6:5: models[0] (id 'portrait'): url: this is a Civitai model page, not a "
            "download link; use https://civitai.com/api/download/models/<versionId> "
            "(the link of the page's Download button)",
            "m.yaml:10:5: models[1] (id 'sdxl'): url: with model_format diffusers, url is a "
            "Hugging Face repo id, not a link: write url: org/sdxl",
            "m.yaml:12:5: models[1] (id 'sdxl'): model_category: 'sdxl' is not one of "
            "'stable_diffusion', 'stable_diffusion_xl', 'flux', 'z_image'",
            "m.yaml:13:5: models[1] (id 'sdxl'): duplicate key 'model_category' (first at "
            "line 12); YAML would silently keep only the last one: remove one",
            "m.yaml:14:5: models[2] (id 'portrait'): model_id: duplicate model_id 'portrait' "
            "(first at line 5); each model_id names one model on the account: "
            "rename or remove one",
            "m.yaml:15:5: models[2] (id 'portrait'): url: a Hugging Face /blob/ link is the "
            "HTML page, not the file; use /resolve/: "
            "https://huggingface.co/org/vae/resolve/main/vae.safetensors",
        ],
    )


def test_validate_reports_every_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = doc(
        """
        version: 1
        models:
          - model_id: a
            url: https://civitai.com/api/download/models/1?token=${CIVITAI_TOKEN}
            model_format: safetensors
            model_category: flux
          - model_id: b
            url: https://example.com/b.safetensors
            model_format: safetensors
            model_category: flux
            model_image: https://example.com/${IMAGE_HOST}/b.png
        """
    )
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out) == (3, [])
    assert err == invalid(
        "m.yaml",
        [
            "m.yaml:4:5: models[0] (id 'a'): url: environment variable CIVITAI_TOKEN is not "
            "set; set it (export CIVITAI_TOKEN=...) or remove ${CIVITAI_TOKEN} from the url",
            "m.yaml:11:5: models[1] (id 'b'): model_image: environment variable IMAGE_HOST is "
            "not set; set it (export IMAGE_HOST=...) or remove ${IMAGE_HOST} from the "
            "model_image",
        ],
    )


def test_validate_several_files_reports_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text(HEAD + MODEL, encoding="utf-8")
    Path("bad.yaml").write_text(with_model("revision: fp8"), encoding="utf-8")
    code, out, err = run_validate(capsys, "good.yaml", "bad.yaml")
    assert code == 3
    assert out == ["good.yaml: valid (1 model)"]
    assert err == invalid(
        "bad.yaml",
        ["bad.yaml:7:5: models[0] (id 'majicmix'): revision: 'fp8' is not one of 'fp16', 'fp32'"],
    )


def test_validate_http_link_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(with_model(url="http://example.com/m.safetensors"), "utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out) == (0, ["m.yaml: valid (1 model)"])
    assert err == [at(4, "url: warning: http:// link; prefer https://")]


def test_validate_example_manifest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, out, err = run_validate(capsys, "manifests/example.yaml")
    assert (code, out, err) == (0, ["manifests/example.yaml: valid (5 models)"], [])


def test_validate_accepts_byte_order_mark_and_merge_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = doc(
        """
        version: 1
        models:
          - &base
            model_id: a
            url: https://example.com/a.safetensors
            model_format: safetensors
            model_category: stable_diffusion_xl
            model_subcategory: lora
          - <<: *base
            model_id: b
        """
    )
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out, err) == (0, ["m.yaml: valid (2 models)"], [])


# --------------------------------------------------------------------------- the API example

# The "Load a ckpt or safetensors Model from Civitai" body of the load_model docs, as a
# user would paste it: model_id and revision are each given twice.
PUBLISHED_BODY_BLOCK = doc(
    """
    version: 1
    models:
      - key: api_key
        url: https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor&size=pruned&fp=fp16
        model_id: majicmix-realistic
        revision: fp32
        model_id: stable-diffusion-1.0-inpainting-0.1
        force_load: yes
        revision: fp16
        model_category: stable_diffusion_xl
        model_format: safetensors
        model_visibility: public
        model_name: stable-diffusion-1.0-inpainting-0.1
        model_image: https://cdn2.stablediffusionapi.com/generations/1a14cab3-cc79-4cee-ab28-29379bff766b-0.png
        hf_upload: no
    """
)
# The same body pasted as JSON (JSON is YAML), its lines shifted by one.
PUBLISHED_BODY_JSON = doc(
    """
    version: 1
    models:
      - {
        "key": "api_key",
        "url": "https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor&size=pruned&fp=fp16",
        "model_id": "majicmix-realistic",
        "revision": "fp32",
        "model_id": "stable-diffusion-1.0-inpainting-0.1",
        "force_load": "yes",
        "revision": "fp16",
        "model_category": "stable_diffusion_xl",
        "model_format": "safetensors",
        "model_visibility": "public",
        "model_name": "stable-diffusion-1.0-inpainting-0.1",
        "model_image": "https://cdn2.stablediffusionapi.com/generations/1a14cab3-cc79-4cee-ab28-29379bff766b-0.png",
        "hf_upload": "no"
      }
    """
)


@pytest.mark.parametrize(
    ("text", "shift"),
    [
        pytest.param(PUBLISHED_BODY_BLOCK, 0, id="yaml"),
        pytest.param(PUBLISHED_BODY_JSON, 1, id="json"),
    ],
)
def test_published_api_example_is_rejected_naming_both_lines(
    text: str,
    shift: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    where = "models[0] (id 'majicmix-realistic'): "
    assert (code, out) == (3, [])
    assert err == invalid(
        "m.yaml",
        [
            f"m.yaml:{3 + shift}:5: {where}{KEY_MESSAGE}",
            f"m.yaml:{7 + shift}:5: {where}duplicate key 'model_id' (first at line {5 + shift}); "
            "YAML would silently keep only the last one: remove one",
            f"m.yaml:{9 + shift}:5: {where}duplicate key 'revision' (first at line {6 + shift}); "
            "YAML would silently keep only the last one: remove one",
        ],
    )


# --------------------------------------------------------------------------- alias budget


def billion_laughs(levels: int) -> str:
    """The classic alias bomb: each level repeats the one before nine times."""
    lines = ["version: 1", "models: []", "lol0: &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_any_schema_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation ran on an alias bomb")

    monkeypatch.setattr(manifest_module, "_schema_errors", never)
    monkeypatch.setattr(manifest_module, "_validator", never)
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(billion_laughs(9), encoding="utf-8")  # 9**9 strings expanded
    start = time.perf_counter()
    code, out, err = run_validate(capsys, "m.yaml")
    elapsed = time.perf_counter() - start
    assert (code, out) == (3, [])
    assert err == invalid(
        "m.yaml",
        [
            "m.yaml:5:7: aliases would expand the document to more than 320 nodes, over 10x "
            "its 32 nodes (an alias bomb); write the values out or use fewer nested aliases"
        ],
    )
    assert elapsed < 2.0, f"the alias bomb took {elapsed:.2f}s to refuse"


def test_alias_reuse_within_budget_is_accepted(tmp_path: Path) -> None:
    text = doc(
        """
        version: 1
        models:
          - model_id: a
            url: https://example.com/a.safetensors
            model_format: safetensors
            model_category: flux
            labels: &team {team: portraits, tier: gold}
          - model_id: b
            url: https://example.com/b.safetensors
            model_format: safetensors
            model_category: flux
            labels: *team
        """
    )
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_manifest(path, env={})
    assert [dict(m.labels) for m in loaded.models] == [{"team": "portraits", "tier": "gold"}] * 2


# --------------------------------------------------------------------------- records


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Manifest:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return load_manifest(path, env=env or {})


@pytest.mark.parametrize("written", ["yes", '"yes"', "true", "True", "on"])
def test_force_load_yes_spellings_give_the_same_record(tmp_path: Path, written: str) -> None:
    spec = load(tmp_path, with_model(f"force_load: {written}")).models[0]
    assert spec.force_load == "yes"
    assert spec.request(spec.force_load)["force_load"] == "yes"


@pytest.mark.parametrize("written", ["no", '"no"', "false", "off"])
def test_hf_upload_no_spellings_give_no(tmp_path: Path, written: str) -> None:
    assert load(tmp_path, with_model(f"hf_upload: {written}")).models[0].hf_upload == "no"


def test_hf_upload_yes_is_sent_as_text(tmp_path: Path) -> None:
    spec = load(tmp_path, with_model("hf_upload: yes")).models[0]
    assert spec.request("no")["hf_upload"] == "yes"


def test_built_in_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, HEAD + MODEL).models[0]
    assert (spec.revision, spec.model_visibility, spec.hf_upload) == ("fp16", "private", "no")
    assert spec.force_load is None
    assert spec.model_name == "majicmix"  # defaults to model_id
    assert spec.model_subcategory is None and spec.model_image is None
    assert dict(spec.labels) == {}
    assert spec.request("no") == {
        "model_id": "majicmix",
        "url": "https://civitai.com/api/download/models/132760",
        "model_format": "safetensors",
        "model_category": "stable_diffusion",
        "model_name": "majicmix",
        "revision": "fp16",
        "model_visibility": "private",
        "hf_upload": "no",
        "force_load": "no",
    }


def test_defaults_are_merged_under_each_model(tmp_path: Path) -> None:
    text = doc(
        """
        version: 1
        target:
          endpoint: http://127.0.0.1:8000/api/v3/load_model
          api_key_env: TEAM_KEY
        defaults:
          revision: fp32
          model_visibility: public
          hf_upload: yes
          force_load: no
          model_subcategory: lora
          labels: {team: portraits, tier: gold}
        models:
          - model_id: plain
            url: https://example.com/plain.safetensors
            model_format: safetensors
            model_category: stable_diffusion_xl
          - model_id: own
            url: https://example.com/own.safetensors
            model_format: safetensors
            model_category: flux
            model_name: Own values
            revision: fp16
            model_visibility: private
            hf_upload: no
            force_load: yes
            model_subcategory: lora
            labels: {team: editing, owner: ana}
        """
    )
    loaded = load(tmp_path, text)
    assert (loaded.endpoint, loaded.api_key_env) == (
        "http://127.0.0.1:8000/api/v3/load_model",
        "TEAM_KEY",
    )
    plain, own = loaded.models
    assert (plain.revision, plain.model_visibility, plain.hf_upload, plain.force_load) == (
        "fp32",
        "public",
        "yes",
        "no",
    )
    assert plain.model_subcategory == "lora"
    assert dict(plain.labels) == {"team": "portraits", "tier": "gold"}
    assert plain.model_name == "plain"
    assert (own.revision, own.model_visibility, own.hf_upload, own.force_load) == (
        "fp16",
        "private",
        "no",
        "yes",
    )
    assert own.model_subcategory == "lora"
    assert dict(own.labels) == {"team": "editing", "tier": "gold", "owner": "ana"}
    assert own.model_name == "Own values"
    assert (own.index, own.line) == (1, 17)


def test_manifest_without_target_uses_the_default_key_variable(tmp_path: Path) -> None:
    loaded = load(tmp_path, HEAD + MODEL)
    assert (loaded.endpoint, loaded.api_key_env) == (None, "MODELSYNC_API_KEY")
    assert loaded.model("majicmix") is loaded.models[0]
    assert loaded.model("other") is None


def test_records_are_frozen(tmp_path: Path) -> None:
    spec = load(tmp_path, HEAD + MODEL).models[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.url = "https://example.com/other.safetensors"
    with pytest.raises(TypeError):
        spec.labels["team"] = "x"


TOKEN_URL = "https://civitai.com/api/download/models/1?token=${CIVITAI_TOKEN}"


def test_request_keeps_the_template_and_body_has_the_value(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        with_model(url=TOKEN_URL, extra="model_image: https://${IMG_HOST}/x.png"),
        env={"CIVITAI_TOKEN": "tok-123456", "IMG_HOST": "cdn.example.com"},
    ).models[0]
    assert spec.url == TOKEN_URL
    assert spec.request("no")["url"] == TOKEN_URL
    assert spec.request("no")["model_image"] == "https://${IMG_HOST}/x.png"
    body = spec.body("yes")
    assert body["url"] == "https://civitai.com/api/download/models/1?token=tok-123456"
    assert body["model_image"] == "https://cdn.example.com/x.png"
    assert body["force_load"] == "yes"


def test_double_dollar_escapes_a_literal(tmp_path: Path) -> None:
    url = "https://example.com/a$${NOT_A_VAR}/m.safetensors?t=${CIVITAI_TOKEN}"
    spec = load(tmp_path, with_model(url=url), env={"CIVITAI_TOKEN": "tok-123456"}).models[0]
    assert spec.request("no")["url"] == url
    assert spec.body("no")["url"] == "https://example.com/a${NOT_A_VAR}/m.safetensors?t=tok-123456"


def test_variables_outside_url_and_image_are_not_interpolated(tmp_path: Path) -> None:
    spec = load(tmp_path, with_model("model_name: Price ${PRICE}")).models[0]
    assert spec.body("no")["model_name"] == "Price ${PRICE}"


def test_fingerprint_ignores_secret_values(tmp_path: Path) -> None:
    text = with_model(url=TOKEN_URL)
    first = load(tmp_path, text, env={"CIVITAI_TOKEN": "token-one"}).models[0]
    second = load(tmp_path, text, env={"CIVITAI_TOKEN": "token-two"}).models[0]
    assert first.body("no") != second.body("no")
    assert first.fingerprint == second.fingerprint


def test_fingerprint_ignores_force_load_and_labels(tmp_path: Path) -> None:
    base = load(tmp_path, HEAD + MODEL).models[0]
    other = load(tmp_path, with_model("force_load: yes\nlabels: {team: x}")).models[0]
    assert base.fingerprint == other.fingerprint
    assert base.fingerprint.startswith("sha256:") and len(base.fingerprint) == 7 + 64
    assert records.fingerprint(base.request("yes")) == base.fingerprint


CHANGED = {
    "model_id": "majicmix-v2",
    "url": "https://civitai.com/api/download/models/132761",
    "model_format": "ckpt",
    "model_category": "stable_diffusion_xl",
    "model_subcategory": "lora",
    "model_name": "MajicMix v2",
    "model_image": "https://example.com/m.png",
    "revision": "fp32",
    "model_visibility": "public",
    "hf_upload": "yes",
}


def test_changed_covers_every_sent_field() -> None:
    assert set(CHANGED) == set(SENT_FIELDS) - {"force_load"}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_fingerprint_changes_with_every_sent_field(tmp_path: Path, name: str) -> None:
    base = load(tmp_path, HEAD + MODEL).models[0]
    changed: ModelSpec = dataclasses.replace(base, **{name: CHANGED[name]})
    assert changed.request("no")[name] == CHANGED[name]
    assert changed.fingerprint != base.fingerprint


def test_fingerprint_changes_through_the_manifest(tmp_path: Path) -> None:
    base = load(tmp_path, HEAD + MODEL).models[0]
    fp32 = load(tmp_path, with_model("revision: fp32")).models[0]
    via_defaults = load(tmp_path, "version: 1\ndefaults: {revision: fp32}\nmodels:\n" + MODEL)
    assert fp32.fingerprint != base.fingerprint
    assert via_defaults.models[0].fingerprint == fp32.fingerprint


def test_load_manifest_raises_manifest_error_with_diagnostics(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(with_model("revision: fp8"), encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, env={})
    assert [(d.line, d.column) for d in info.value.diagnostics] == [(7, 5)]
    assert info.value.exit_code == 3


# --------------------------------------------------------------------------- secrets


def test_canary_secret_appears_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", CANARY)
    monkeypatch.chdir(tmp_path)
    text = with_model(url="http://example.com/m.safetensors?token=${CIVITAI_TOKEN}")
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert code == 0
    assert CANARY not in "\n".join(out + err)
    assert err == [at(4, "url: warning: http:// link; prefer https://")]

    loaded = load_manifest("m.yaml")
    spec = loaded.models[0]
    assert CANARY in spec.body("no")["url"]  # the canary was really read...
    for text_form in (repr(loaded), repr(spec), str(spec), repr(loaded.models)):
        assert CANARY not in text_form  # ...and is in no representation


@pytest.mark.parametrize(
    "other",
    [
        pytest.param("model_name: 1.10", id="schema-error-elsewhere"),
        pytest.param("model_image: https://example.com/${UNSET_VARIABLE}.png", id="unset-var"),
        pytest.param("model_image: https://example.com/${CIVITAI_TOKEN", id="unclosed"),
    ],
)
def test_canary_secret_is_not_in_error_output(
    other: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", CANARY)
    monkeypatch.chdir(tmp_path)
    text = with_model(url=TOKEN_URL) + MODEL.replace("majicmix", "second") + "    " + other + "\n"
    Path("m.yaml").write_text(text, encoding="utf-8")
    for args in (["validate", "m.yaml"], ["-v", "validate", "m.yaml"]):
        code = main(args)
        captured = capsys.readouterr()
        assert code == 3
        assert "models[1] (id 'second')" in captured.err
        assert CANARY not in captured.out + captured.err


# --------------------------------------------------------------------------- real data


# What the current API has no category for: written with its old, deprecated value.
CORPUS_DEPRECATED = {
    "controlnet": "controlnet",
    "t2i-adapter": "controlnet",
    "t2i-style": "controlnet",
    "vae": "vae",
    "taesd": "vae",
    "embedding": "embeddings",
}


def _corpus_entry(entry: dict[str, Any]) -> dict[str, str] | None:
    """A manifest model for one ComfyUI-Manager entry, or None if it is not a link we take.

    As a user would write it today: a LoRA is its base model's category with
    model_subcategory lora; a ControlNet, VAE or embedding, which the current API lists no
    category for, keeps its deprecated category (and gets a warning, rightly).
    """
    url = str(entry.get("url", ""))
    filename = str(entry.get("filename", ""))
    if url.startswith("https://huggingface.co/") and "/resolve/" in url:
        extension = url.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower()
    elif url.startswith("https://civitai.com/api/download/models/"):
        extension = filename.rsplit(".", 1)[-1].lower()
    elif filename == "<huggingface>" and re.fullmatch(r"[\w.-]+/[\w.-]+", url):
        extension = "diffusers"
    else:
        return None
    fmt = {"safetensors": "safetensors", "diffusers": "diffusers"}.get(extension, "ckpt")
    kind = str(entry.get("type", "")).lower()
    base = str(entry.get("base", "")).lower()
    if kind in CORPUS_DEPRECATED:
        category = CORPUS_DEPRECATED[kind]
    elif "flux" in base:
        category = "flux"
    elif "sdxl" in base:
        category = "stable_diffusion_xl"
    else:
        category = "stable_diffusion"
    return {
        "url": url,
        "model_format": fmt,
        "model_category": category,
        "model_subcategory": "lora" if "lora" in kind else "",
        "model_name": str(entry.get("name", ""))[:200] or "unnamed",
        "base": str(entry.get("base", "")),
    }


def corpus_manifest(entries: list[dict[str, Any]]) -> tuple[str, int]:
    """A manifest (YAML, strings JSON-quoted) of every usable entry, and how many."""
    lines = ["version: 1", "models:"]
    seen: set[str] = set()
    count = 0
    for entry in entries:
        model = _corpus_entry(entry)
        if model is None:
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model["model_name"]).strip("-._")[:90] or "m"
        model_id, n = stem, 1
        while model_id.lower() in seen:
            n += 1
            model_id = f"{stem}-{n}"
        seen.add(model_id.lower())
        count += 1
        lines.append(f"  - model_id: {json.dumps(model_id)}")
        for name in ("url", "model_format", "model_category", "model_subcategory", "model_name"):
            if model[name]:
                lines.append(f"    {name}: {json.dumps(model[name])}")
        if model["base"]:
            lines.append(f"    labels: {{base: {json.dumps(model['base'])}}}")
    return "\n".join(lines) + "\n", count


@pytest.mark.skipif(not CORPUS.is_file(), reason="shared/corpus is not beside the repository")
def test_real_links_raise_no_false_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(CORPUS.read_text(encoding="utf-8"))["models"]
    text, count = corpus_manifest(entries)
    assert count >= 500  # the corpus holds 562 models, over 500 of them usable links
    monkeypatch.chdir(tmp_path)
    Path("real.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "real.yaml")
    assert (code, out) == (0, [f"real.yaml: valid ({count} models)"])
    loaded = load_manifest("real.yaml", env={})
    formats = {m.model_format for m in loaded.models}
    assert formats == {"safetensors", "ckpt", "diffusers"}
    assert len({m.fingerprint for m in loaded.models}) == count
    assert sum(m.model_subcategory == "lora" for m in loaded.models) >= 80
    # The only warnings are true alarms: a category the current API does not list. None is
    # about a real link (a repo id with a file format, a format mismatch, a second '?').
    deprecated = [m for m in loaded.models if m.model_category in CORPUS_DEPRECATED.values()]
    assert len(deprecated) >= 80
    assert err == [str(w) for w in loaded.warnings]
    assert [(w.line, w.column) for w in loaded.warnings] == [(m.line + 3, 5) for m in deprecated]
    assert all(
        re.search(
            rf"\(id '{re.escape(m.model_id)}'\): model_category: warning: "
            rf"'{m.model_category}' is deprecated: ",
            str(w),
        )
        for m, w in zip(deprecated, loaded.warnings, strict=True)
    )


# --------------------------------------------------------------------------- schema command


def test_schema_command_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == (REPO / "schemas" / "manifest.schema.json").read_text(encoding="utf-8")
    assert json.loads(out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_environment_is_not_read_when_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVITAI_TOKEN", "from-the-process")
    with pytest.raises(ManifestError):
        load(tmp_path, with_model(url=TOKEN_URL), env={})
    assert os.environ["CIVITAI_TOKEN"] == "from-the-process"


def test_validate_several_missing_fields_are_each_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # jsonschema gives one "required" error per missing field; each names them all.
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(HEAD + "  - model_id: majicmix\n", encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out) == (3, [])
    assert err == invalid(
        "m.yaml",
        [
            at(
                3,
                "missing required field 'model_category'; add 'model_category:' with one of "
                "'stable_diffusion', 'stable_diffusion_xl', 'flux', 'z_image'",
            ),
            at(
                3,
                "missing required field 'model_format'; add 'model_format:' with one of "
                "'diffusers', 'safetensors', 'ckpt'",
            ),
            at(3, "missing required field 'url'; add 'url:'"),
        ],
    )
