"""The manifest rules of the published request schema (issue 12; DESIGN §1).

Categories and subcategories as the API publishes them, the deprecated categories, the
warnings for what is suspicious but may work, ``--strict``, the schema's marks for editors,
and the examples of the docs. Exact texts, as a user sees them (tests/test_manifest.py
has the pipeline's other messages and the helpers used here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from modelsync import output
from modelsync.commands.validate import validate
from modelsync.errors import ManifestError
from modelsync.manifest import load as manifest_module
from modelsync.manifest import load_manifest, schema
from modelsync.manifest.fastcheck import _fast_check
from modelsync.settings import Settings
from tests.test_manifest import HEAD, MODEL, at, doc, invalid, run_validate, with_model
from tests.test_pipeline import fenced_blocks

REPO = Path(__file__).resolve().parents[1]
CURRENT = ["stable_diffusion", "stable_diffusion_xl", "flux", "z_image"]
CURRENT_SHOWN = "'stable_diffusion', 'stable_diffusion_xl', 'flux', 'z_image'"
STRICT = " (an error because of --strict)"
NOTHING_NOW = (
    "and lists no category or subcategory for {what} now; whether the service still loads "
    "one is not documented: ask ModelsLab before relying on it"
)
DEPRECATED = {
    "controlnet": "'controlnet' is deprecated: the API has not listed it since 2025-12-09 "
    + NOTHING_NOW.format(what="ControlNets"),
    "lora": "'lora' is deprecated: the API has not listed it since 2025-12-09, when a LoRA "
    "became its base model's category plus a subcategory; write the base model's category "
    "(stable_diffusion, stable_diffusion_xl, flux or z_image) and model_subcategory: lora",
    "embeddings": "'embeddings' is deprecated: the API has not listed it since 2025-12-09 "
    + NOTHING_NOW.format(what="embeddings"),
    "vae": "'vae' is deprecated: only the 2023 docs list it, and the API lists no category or "
    "subcategory for a VAE now; whether the service still loads one is not documented: "
    "ask ModelsLab before relying on it",
    "flux_lora": "'flux_lora' is deprecated: the API has not listed it since 2025-12-09; "
    "write model_category: flux and model_subcategory: lora",
    "flux_embeddings": "'flux_embeddings' is deprecated: the API has not listed it since "
    "2025-12-09 " + NOTHING_NOW.format(what="embeddings"),
    "flux_checkpoint": "'flux_checkpoint' is deprecated: the API has not listed it since "
    "2025-12-09; write model_category: flux",
}
REPO_ID_AS_FILE = (
    "url: warning: 'org/name' is a Hugging Face repo id, but with model_format {fmt} the "
    "service expects a file link; use model_format: diffusers, or a /resolve/ link to the "
    "file: https://huggingface.co/org/name/resolve/main/<file>.{fmt}"
)
CIVITAI = "https://civitai.com/api/download/models/132760?type=Model&format=SafeTensor"
SUBCATEGORY_ONLY_LORA = (
    "is not a subcategory the API publishes, only 'lora' is{hint}; "
    "for a model that is not a LoRA, remove the line"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- warnings

WARNINGS: list[Any] = [
    *(
        pytest.param(
            with_model(model_category=value),
            [at(6, f"model_category: warning: {message}")],
            id=f"deprecated-{value}",
        )
        for value, message in DEPRECATED.items()
    ),
    pytest.param(
        with_model(url="org/name"),
        [at(4, REPO_ID_AS_FILE.format(fmt="safetensors"))],
        id="repo-id-with-safetensors",
    ),
    pytest.param(
        with_model(url="org/name", model_format="ckpt"),
        [at(4, REPO_ID_AS_FILE.format(fmt="ckpt"))],
        id="repo-id-with-ckpt",
    ),
    pytest.param(
        with_model(url="https://example.com/files/model.ckpt"),
        [
            at(
                4,
                "url: warning: the link is a .ckpt file but model_format is safetensors; "
                "write model_format: ckpt, or link the .safetensors file",
            )
        ],
        id="ckpt-link-with-safetensors",
    ),
    pytest.param(
        with_model(
            url="https://huggingface.co/org/name/resolve/main/Model.SafeTensors?download=true",
            model_format="ckpt",
        ),
        [
            at(
                4,
                "url: warning: the link is a .safetensors file but model_format is ckpt; "
                "write model_format: safetensors, or link the .ckpt file",
            )
        ],
        id="safetensors-link-with-ckpt",
    ),
    pytest.param(
        with_model(url=CIVITAI, model_format="ckpt"),
        [
            at(
                4,
                "url: warning: the link asks Civitai for format=SafeTensor (a .safetensors "
                "file) but model_format is ckpt; write model_format: safetensors, or "
                "format=PickleTensor",
            )
        ],
        id="civitai-safetensor-with-ckpt",
    ),
    pytest.param(
        with_model(url=CIVITAI.replace("SafeTensor", "PickleTensor")),
        [
            at(
                4,
                "url: warning: the link asks Civitai for format=PickleTensor (a .ckpt file) "
                "but model_format is safetensors; write model_format: ckpt, or "
                "format=SafeTensor",
            )
        ],
        id="civitai-pickletensor-with-safetensors",
    ),
    pytest.param(
        with_model(url=CIVITAI + "&fp=fp16?token=${CIVITAI_TOKEN}"),
        [
            at(
                4,
                "url: warning: a second '?' in the url (fp=fp16?token=...): Civitai reads "
                "'token=...' as part of the value of fp, so it never sees token; separate "
                "parameters with '&': fp=fp16&token=...",
            )
        ],
        id="second-question-mark-hides-the-token",
    ),
    pytest.param(
        with_model(url="https://example.com/m.safetensors?download=true?x&y=1"),
        [
            at(
                4,
                "url: warning: a second '?' in the url (download=true?x): the server reads "
                "'x' as part of the value of download, so it never sees x; separate "
                "parameters with '&': download=true&x",
            )
        ],
        id="second-question-mark-elsewhere",
    ),
    pytest.param(
        with_model(url="https://example.com/m.safetensors?v=2?"),
        [
            at(
                4,
                "url: warning: a second '?' in the url (v=2?): it is read as part of the "
                "value of v; remove it",
            )
        ],
        id="second-question-mark-at-the-end",
    ),
    pytest.param(
        with_model(url="http://example.com/m.ckpt?a=1?b=2", model_category="lora"),
        [
            at(
                4,
                "url: warning: a second '?' in the url (a=1?b=...): the server reads 'b=...' "
                "as part of the value of a, so it never sees b; separate parameters with '&': "
                "a=1&b=...",
            ),
            at(4, "url: warning: http:// link; prefer https://"),
            at(
                4,
                "url: warning: the link is a .ckpt file but model_format is safetensors; "
                "write model_format: ckpt, or link the .safetensors file",
            ),
            at(6, f"model_category: warning: {DEPRECATED['lora']}"),
        ],
        id="several-warnings-sorted",
    ),
]


@pytest.mark.parametrize(("text", "expected"), WARNINGS)
def test_warning_is_printed_and_the_manifest_stays_valid(
    text: str,
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIVITAI_TOKEN", "tok-0123456789")
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out, err) == (0, ["m.yaml: valid (1 model)"], expected)


@pytest.mark.parametrize(("text", "expected"), WARNINGS)
def test_strict_turns_each_warning_into_an_error(
    text: str,
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    (checked,) = validate(["m.yaml"], {"CIVITAI_TOKEN": "tok-0123456789"}, strict=True)
    assert checked.manifest is None and checked.error is not None
    assert checked.error.exit_code == 3
    assert output.print_checked(checked, quiet=False) is False
    errors = [line.replace(": warning: ", ": ", 1) + STRICT for line in expected]
    assert capsys.readouterr() == ("", "\n".join(invalid("m.yaml", errors)) + "\n")


NO_WARNING = [
    pytest.param(HEAD + MODEL, id="civitai-link"),
    pytest.param(with_model(url=CIVITAI + "&fp=fp16&token=${CIVITAI_TOKEN}"), id="token-with-&"),
    pytest.param(
        with_model(url=CIVITAI.replace("SafeTensor", "PickleTensor"), model_format="ckpt"),
        id="civitai-pickletensor-with-ckpt",
    ),
    pytest.param(
        with_model(url="https://huggingface.co/o/n/resolve/main/m.safetensors?download=true"),
        id="safetensors-link-with-query",
    ),
    pytest.param(
        with_model(url="https://example.com/m.ckpt#x?y", model_format="ckpt"),
        id="question-mark-in-the-fragment",
    ),
    pytest.param(with_model(url="https://example.com/models/model.bin"), id="other-extension"),
    pytest.param(
        with_model(model_format="diffusers", url="org/name", model_category="flux"),
        id="repo-id-with-diffusers",
    ),
    *(
        pytest.param(with_model("model_subcategory: lora", model_category=c), id=f"{c}-lora")
        for c in CURRENT
    ),
]


@pytest.mark.parametrize("text", NO_WARNING)
def test_no_warning_for_what_is_right(
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIVITAI_TOKEN", "tok-0123456789")
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out, err) == (0, ["m.yaml: valid (1 model)"], [])
    assert load_manifest("m.yaml", strict=True).warnings == ()


# --------------------------------------------------------------------------- strict


def test_strict_reports_warnings_with_the_other_errors(tmp_path: Path) -> None:
    text = doc(
        """
        version: 1
        models:
          - model_id: a
            url: http://example.com/a.safetensors
            model_format: safetensors
            model_category: vae
          - model_id: b
            url: https://example.com/b.safetensors
            model_format: safetensors
            model_category: flux
            revision: fp8
        """
    )
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, env={}, strict=True)
    assert [str(d).removeprefix(f"{path}:") for d in info.value.diagnostics] == [
        f"4:5: models[0] (id 'a'): url: http:// link; prefer https://{STRICT}",
        f"6:5: models[0] (id 'a'): model_category: {DEPRECATED['vae']}{STRICT}",
        "11:5: models[1] (id 'b'): revision: 'fp8' is not one of 'fp16', 'fp32'",
    ]
    # Without --strict, the errors alone are reported: the warnings wait for a valid file.
    with pytest.raises(ManifestError) as info:
        load_manifest(path, env={})
    assert len(info.value.diagnostics) == 1


def test_strict_without_warnings_is_valid(tmp_path: Path) -> None:
    loaded = load_manifest(write(tmp_path, HEAD + MODEL), env={}, strict=True)
    assert [m.model_id for m in loaded.models] == ["majicmix"] and loaded.warnings == ()


def test_warnings_are_on_the_manifest_in_file_order(tmp_path: Path) -> None:
    text = with_model(model_category="lora") + MODEL.replace("majicmix", "b").replace(
        "stable_diffusion", "vae"
    )
    loaded = load_manifest(write(tmp_path, text), env={})
    assert [(w.line, w.message.split(": warning: ")[0]) for w in loaded.warnings] == [
        (6, "models[0] (id 'majicmix'): model_category"),
        (10, "models[1] (id 'b'): model_category"),
    ]


def test_settings_take_strict_from_the_options(tmp_path: Path) -> None:
    path = str(write(tmp_path, with_model(model_category="flux_checkpoint")))
    options: dict[str, Any] = {"strict": True, "parallelism": 4, "state": None}
    settings = Settings.from_options(path, options, command="modelsync plan --strict")
    assert settings.strict is True
    assert options == {"parallelism": 4}  # the rest is the command's business
    with pytest.raises(ManifestError) as info:
        _ = settings.manifest
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message.endswith(f"{DEPRECATED['flux_checkpoint']}{STRICT}")
    lenient = Settings.from_options(path, {"strict": False})
    assert lenient.strict is False
    assert [w.line for w in lenient.manifest.warnings] == [6]
    assert Settings(path).strict is False


# --------------------------------------------------------------------------- errors

ERRORS = [
    pytest.param(
        with_model(model_category="Flux"),
        [at(6, f"model_category: 'Flux' is not one of {CURRENT_SHOWN} (did you mean 'flux'?)")],
        id="category-case",
    ),
    pytest.param(
        with_model(model_category="stable-diffusion-xl"),
        [
            at(
                6,
                "model_category: 'stable-diffusion-xl' is not one of "
                f"{CURRENT_SHOWN} (did you mean 'stable_diffusion_xl'?)",
            )
        ],
        id="category-near-miss",
    ),
    pytest.param(
        with_model(model_category="contrlnet"),
        [at(6, f"model_category: 'contrlnet' is not one of {CURRENT_SHOWN}")],
        id="category-never-suggests-a-deprecated-value",
    ),
    pytest.param(
        with_model(model_category="LoRA"),
        [at(6, f"model_category: 'LoRA' is not one of {CURRENT_SHOWN}")],
        id="category-lora-spelled-otherwise",
    ),
    pytest.param(
        with_model(model_category="1.5"),
        [at(6, f"model_category: 1.5 is not one of {CURRENT_SHOWN}")],
        id="category-number",
    ),
    pytest.param(
        with_model(model_category=""),
        [at(6, f"model_category: an empty value is not one of {CURRENT_SHOWN}")],
        id="category-empty",
    ),
    pytest.param(
        with_model("model_subcategory: LoRA"),
        [
            at(
                7,
                "model_subcategory: 'LoRA' "
                + SUBCATEGORY_ONLY_LORA.format(hint=" (did you mean 'lora'?)"),
            )
        ],
        id="subcategory-case",
    ),
    pytest.param(
        with_model("model_subcategory: lycoris"),
        [at(7, "model_subcategory: 'lycoris' " + SUBCATEGORY_ONLY_LORA.format(hint=""))],
        id="subcategory-other",
    ),
    pytest.param(
        with_model("model_subcategory: null"),
        [at(7, "model_subcategory: an empty value " + SUBCATEGORY_ONLY_LORA.format(hint=""))],
        id="subcategory-null",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  model_subcategory: loras\nmodels:\n" + MODEL,
        [
            "m.yaml:3:3: defaults.model_subcategory: 'loras' "
            + SUBCATEGORY_ONLY_LORA.format(hint=" (did you mean 'lora'?)")
        ],
        id="subcategory-in-defaults",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_category_and_subcategory_errors(
    text: str,
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text(text, encoding="utf-8")
    code, out, err = run_validate(capsys, "m.yaml")
    assert (code, out, err) == (3, [], invalid("m.yaml", expected))


# --------------------------------------------------------------------------- the schema


def _category() -> dict[str, Any]:
    category: dict[str, Any] = schema()["$defs"]["model"]["properties"]["model_category"]
    return category


def test_schema_lists_the_published_categories_then_the_deprecated_ones() -> None:
    current, *deprecated = _category()["anyOf"]
    assert current["enum"] == CURRENT and "deprecated" not in current
    assert [b["const"] for b in deprecated] == list(DEPRECATED)
    for branch in deprecated:
        # deprecated: JSON Schema 2019-09's mark; deprecationMessage: what VS Code's YAML
        # extension shows as a warning; description: hover and completion text.
        assert branch["deprecated"] is True
        assert branch["deprecationMessage"] == DEPRECATED[branch["const"]]
        assert branch["description"].startswith("Deprecated (")
        assert set(branch) == {"const", "deprecated", "deprecationMessage", "description"}


def test_schema_subcategory_is_the_published_enum() -> None:
    root = schema()
    for where in (root["properties"]["defaults"], root["$defs"]["model"]):
        sub = where["properties"]["model_subcategory"]
        assert sub["enum"] == ["lora"] and "type" not in sub
        assert where["additionalProperties"] is False


@pytest.mark.parametrize(
    ("url", "fmt", "accepted"),
    [
        ("org/name", "safetensors", True),  # with a warning
        ("org/name", "ckpt", True),
        ("https://example.com/m.safetensors", "safetensors", True),
        ("name", "safetensors", False),  # a bare name is no namespace/name
        ("model.safetensors", "safetensors", False),
        ("example.com/model.safetensors", "safetensors", False),  # a link without a scheme
        ("example.com/model.CKPT", "ckpt", False),
        ("org/my--model", "ckpt", False),
        ("ftp://example.com/m.ckpt", "ckpt", False),
        ("https://huggingface.co/org/name", "diffusers", False),
        ("org/name", "diffusers", True),
    ],
)
def test_schema_url_forms_and_the_fast_path_agree(url: str, fmt: str, accepted: bool) -> None:
    model = {"model_id": "a", "url": url, "model_format": fmt, "model_category": "flux"}
    document = {"version": 1, "models": [model]}
    assert jsonschema.Draft202012Validator(schema()).is_valid(document) is accepted
    assert _fast_check()(model) is accepted


@pytest.mark.parametrize("value", [*CURRENT, *DEPRECATED])
def test_fast_path_takes_every_category_the_schema_takes(value: str) -> None:
    model = {
        "model_id": "a",
        "url": "https://example.com/m.safetensors",
        "model_format": "safetensors",
        "model_category": value,
        "model_subcategory": "lora",
    }
    assert _fast_check()(model)
    assert not _fast_check()({**model, "model_subcategory": "lycoris"})
    assert not _fast_check()({**model, "model_category": value.upper()})


def test_valid_manifests_never_need_jsonschema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deprecated values and repo ids with a file format are warnings, not schema errors:
    # the fast path takes them, and a 10,000-model manifest stays fast.
    def never() -> None:
        raise AssertionError("jsonschema ran on a valid manifest")

    monkeypatch.setattr(manifest_module, "_validator", never)
    text = with_model(model_category="lora", url="org/name") + MODEL.replace("majicmix", "b")
    loaded = load_manifest(write(tmp_path, text), env={})
    assert len(loaded.models) == 2 and len(loaded.warnings) == 2
    load_manifest(REPO / "manifests" / "example.yaml", env={}, strict=True)


def test_force_load_is_described_as_apply_decides_it() -> None:
    root = schema()
    for where in (root["properties"]["defaults"], root["$defs"]["model"]):
        text = where["properties"]["force_load"]["description"]
        assert "for an update or a retry" not in text
        assert "a retry follows the cause of its failure" in text
        assert "a conflict is never retried" in text


# --------------------------------------------------------------------------- the docs

DOCS_ENV = {"CIVITAI_TOKEN": "tok-0123456789"}


def manifest_blocks() -> list[Any]:
    """Every YAML block of docs/manifest.md and README.md that is a manifest."""
    return [
        pytest.param(block, id=f"{path.name}-{number}")
        for path in (REPO / "docs" / "manifest.md", REPO / "README.md")
        for number, block in enumerate(fenced_blocks(path, "yaml"))
        if re.search(r"^models:", block, flags=re.M)
    ]


def test_the_docs_hold_manifest_examples() -> None:
    names = [p.id.split("-")[0] for p in manifest_blocks()]
    assert names.count("manifest.md") >= 3 and names.count("README.md") >= 1


@pytest.mark.parametrize("block", manifest_blocks())
def test_docs_manifest_example_passes_strict(block: str, tmp_path: Path) -> None:
    loaded = load_manifest(write(tmp_path, block), env=DOCS_ENV, strict=True)
    assert loaded.models and loaded.warnings == ()


def test_example_manifest_passes_strict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    (checked,) = validate(["manifests/example.yaml"], {}, strict=True)
    assert checked.error is None and checked.manifest is not None
    categories = {(m.model_category, m.model_subcategory) for m in checked.manifest.models}
    assert ("stable_diffusion_xl", "lora") in categories and ("flux", "lora") in categories
    code, out, err = run_validate(capsys, "manifests/example.yaml")
    assert (code, out, err) == (0, ["manifests/example.yaml: valid (5 models)"], [])


def test_docs_migration_table_has_every_deprecated_value() -> None:
    text = (REPO / "docs" / "manifest.md").read_text(encoding="utf-8")
    hand_written = text.split("<!-- Generated below", 1)[0]
    rows = re.findall(r"^\| `model_category: (\w+)` \(", hand_written, flags=re.M)
    assert sorted(rows) == sorted(DEPRECATED)
    for value in CURRENT:
        assert f"| `{value}` |" in hand_written
    assert "for an update or a retry" not in text
