"""Property and fuzz tests (Hypothesis) across the modules.

- ``load_manifest`` on any bytes, text, or mutated valid manifest ends in a valid
  ``Manifest`` or a ``ManifestError``, never another exception;
- plan, then apply, then plan again: nothing is left to do;
- a fingerprint does not depend on the order of keys;
- the schema fast path of ``modelsync.manifest`` never accepts what jsonschema rejects.

Example counts are bounded so the file runs in seconds; ``deadline=None`` because the
machines that run it are shared and their timings noisy.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modelsync import manifest as manifest_module
from modelsync.api.retry import RetryPolicy
from modelsync.commands.apply import apply
from modelsync.commands.plan import plan
from modelsync.controls import StopFlag
from modelsync.errors import ManifestError
from modelsync.manifest import Manifest, fastcheck, load_manifest, schemafile
from modelsync.records import ModelRecord, fingerprint
from modelsync.runner import ApplyOptions
from modelsync.settings import ClientOptions, Settings
from modelsync.store.file import StateStore
from modelsync.yamlio import YamlDate
from tests.helpers import ENDPOINT

KEY = "test-key-1b9e3c7a0d42"
TOKEN = "tok-9f8e7d6c5b4a"
ENV = {"CIVITAI_TOKEN": TOKEN, "MODELSYNC_API_KEY": KEY}
OK = {"status": "success", "message": "model load started"}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_RUNS = itertools.count()
FORMATS = ("diffusers", "safetensors", "ckpt")
# The current categories and the deprecated ones (valid, with a warning).
CATEGORIES = tuple(
    value
    for branch in manifest_module.schema()["$defs"]["model"]["properties"]["model_category"][
        "anyOf"
    ]
    for value in branch.get("enum", [branch.get("const")])
)


# --------------------------------------------------------------------------- strategies

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
repo_part = st.from_regex(
    r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9_])?", fullmatch=True
).filter(lambda part: "--" not in part and ".." not in part)
label_key = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,10}", fullmatch=True)
label_value = st.text(alphabet=string.ascii_letters + string.digits + "-_ ", max_size=12)
link = st.builds(
    "https://{}.example.com/{}.safetensors{}".format,
    st.sampled_from(["cdn", "huggingface", "files"]),
    st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True),
    st.sampled_from(["", "?type=Model", "?token=${CIVITAI_TOKEN}", "?a=$${literal}"]),
)


@st.composite
def valid_models(draw: st.DrawFn) -> dict[str, Any]:
    """A model entry the schema and the checks accept."""
    fmt = draw(st.sampled_from(FORMATS))
    if fmt == "diffusers":
        url = draw(st.builds("{}/{}".format, repo_part, repo_part))
    else:
        url = draw(link)
    entry: dict[str, Any] = {
        "model_id": draw(ids),
        "url": url,
        "model_format": fmt,
        "model_category": draw(st.sampled_from(CATEGORIES)),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "model_name": st.text(alphabet=string.ascii_letters + " -", min_size=1, max_size=30),
        "model_subcategory": st.just("lora"),
        "model_image": st.just("https://cdn.example.com/preview.png"),
        "revision": st.sampled_from(["fp16", "fp32"]),
        "model_visibility": st.sampled_from(["private", "public"]),
        "force_load": st.sampled_from(["yes", "no", True, False]),
        "hf_upload": st.sampled_from(["yes", "no", True, False]),
        "labels": st.dictionaries(label_key, label_value, max_size=3),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            entry[name] = draw(strategy)
    return entry


@st.composite
def valid_documents(draw: st.DrawFn, max_models: int = 6) -> dict[str, Any]:
    """A whole valid manifest: unique ids, maybe target and defaults."""
    models = draw(
        st.lists(valid_models(), min_size=1, max_size=max_models, unique_by=lambda m: m["model_id"])
    )
    document: dict[str, Any] = {"version": 1}
    if draw(st.booleans()):
        document["target"] = {"endpoint": ENDPOINT, "api_key_env": "MODELSYNC_API_KEY"}
    if draw(st.booleans()):
        document["defaults"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "revision": st.sampled_from(["fp16", "fp32"]),
                    "model_visibility": st.sampled_from(["private", "public"]),
                    "hf_upload": st.sampled_from(["yes", "no", False]),
                    "labels": st.dictionaries(label_key, label_value, max_size=2),
                },
            )
        )
    document["models"] = models
    return document


# Values that sit near the edges of what the schema allows.
tricky_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(1.0),
    st.text(max_size=8),
    st.sampled_from(
        [
            "",
            " ",
            "-lead",
            ".lead",
            "a" * 101,
            "a" * 100,
            "x" * 97 + "/y",
            "org/name.git",
            "org--name/x",
            "org/na..me",
            "org/name/extra",
            "https://x.test/a b",
            "https://x.test/\u00e9",
            "http://x.test/m.ckpt",
            "ftp://x.test/m.ckpt",
            "https://" + "a" * 2041,
            "https://" + "a" * 2040,
            "DIFFUSERS",
            "Stable_Diffusion",
            "fp8",
            "YES",
            "on",
            "lora\n",
            "é",
            "\u2028",
            "${CIVITAI_TOKEN}",
        ]
    ),
    st.builds(YamlDate, st.sampled_from(["2024-01-01", "fp16", "diffusers", "yes"])),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["team", "-x", "a" * 64, "ok/x"]), st.just("v"), max_size=2),
)
field_names = st.sampled_from(
    [
        *manifest_module.schema()["$defs"]["model"]["properties"],
        "key",
        "modelid",
        "Model_Id",
        "labels",
    ]
)


@st.composite
def near_valid_models(draw: st.DrawFn) -> dict[str, Any]:
    """A valid model with a few fields replaced, removed or added."""
    entry = draw(valid_models())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set", "drop", "set-label"]))
        name = draw(field_names)
        if action == "set":
            entry[name] = draw(tricky_values)
        elif action == "drop":
            entry.pop(name, None)
        else:
            entry["labels"] = {draw(st.text(max_size=4)): draw(tricky_values)}
    return entry


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


class _Dumper(yaml.SafeDumper):
    """Writes a YamlDate back as the unquoted date (or tagged text) it was read from."""


_Dumper.add_representer(
    YamlDate, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:timestamp", value)
)


def dump(document: Any, style: str) -> str:
    if style == "json":
        return json.dumps(document, indent=2)
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def load_or_error(path: Path) -> Manifest | ManifestError:
    """The loader's answer: a manifest, or its error; any other exception fails the test."""
    try:
        return load_manifest(path, ENV)
    except ManifestError as exc:
        assert exc.diagnostics, "a ManifestError without diagnostics"
        for diagnostic in exc.diagnostics:
            assert diagnostic.message.strip()
            assert TOKEN not in str(diagnostic), "an interpolated secret in a message"
        return exc


def valid_manifest_text() -> str:
    return dump(
        {
            "version": 1,
            "target": {"endpoint": ENDPOINT},
            "defaults": {"revision": "fp16", "labels": {"team": "core"}},
            "models": [
                {
                    "model_id": "majicmix-realistic",
                    "url": "https://civitai.com/api/download/models/132760?token=${CIVITAI_TOKEN}",
                    "model_format": "safetensors",
                    "model_category": "stable_diffusion",
                    "model_name": "MajicMix Realistic",
                    "labels": {"team": "portraits"},
                },
                {
                    "model_id": "sdxl-inpainting",
                    "url": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                    "model_format": "diffusers",
                    "model_category": "stable_diffusion_xl",
                    "force_load": "yes",
                },
            ],
        },
        "yaml",
    )


# YAML's sharp edges, spliced into a valid manifest.
yaml_tokens = st.sampled_from(
    [
        ":",
        ": ",
        "- ",
        "-",
        "  ",
        "\t",
        "\n",
        "\n  ",
        "&a ",
        "*a",
        "<<: *a\n",
        "!!python/object:os.system ",
        "!custom ",
        "!!binary ",
        "{",
        "}",
        "[",
        "]",
        "'",
        '"',
        "#",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "${",
        "$${",
        "${NOT_SET}",
        "? ",
        "|\n",
        ">-\n",
        "\ufeff",
        "\x85",
        "\u2028",
        "\x07",
        "2024-01-01",
        "0x1F",
        "1_000",
        ".inf",
        "~",
        "yes",
        "model_id: dup\n",
    ]
)


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """The valid manifest with a few splices, deletions and line shuffles."""
    text = valid_manifest_text()
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "insert", "delete", "duplicate-line", "swap"]))
        if action == "insert":
            text = text[:position] + draw(yaml_tokens) + text[position:]
        elif action == "delete":
            end = min(len(text), position + draw(st.integers(1, 12)))
            text = text[:position] + text[end:]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if action == "duplicate-line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


deep_nesting = st.integers(1, 300).map(lambda n: "version: 1\nmodels: " + "[" * n + "]" * n)


# --------------------------------------------------------------------------- loader fuzz


@FUZZ
@given(data=st.binary(max_size=600))
def test_load_manifest_any_bytes_is_a_manifest_or_a_manifest_error(
    folder: Path, data: bytes
) -> None:
    path = folder / "bytes.yaml"
    path.write_bytes(data)
    load_or_error(path)


@FUZZ
@given(text=st.one_of(st.text(max_size=300), mutated_texts(), deep_nesting))
def test_load_manifest_any_text_is_a_manifest_or_a_manifest_error(folder: Path, text: str) -> None:
    path = folder / "text.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_error(path)


@pytest.mark.slow
@FUZZ
@given(
    document=valid_documents(),
    mutations=st.lists(
        st.tuples(st.integers(0, 10), field_names, st.booleans(), tricky_values), max_size=3
    ),
    top=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["version", "target", "defaults", "models", "extra"]), tricky_values
        ),
    ),
    style=st.sampled_from(["yaml", "json"]),
)
def test_load_manifest_mutated_document_is_a_manifest_or_a_manifest_error(
    folder: Path,
    document: dict[str, Any],
    mutations: list[tuple[int, str, bool, Any]],
    top: tuple[str, Any] | None,
    style: str,
) -> None:
    models = document["models"]
    for index, name, drop, value in mutations:
        model = models[index % len(models)]
        if drop:
            model.pop(name, None)
        else:
            model[name] = value
    if top is not None:
        document[top[0]] = top[1]
    path = folder / f"mutated.{style}"
    try:
        path.write_text(dump(document, style), encoding="utf-8")
    except (TypeError, ValueError):  # a YamlDate or float JSON/YAML cannot write
        assume(False)
    load_or_error(path)


@FEW
@given(document=valid_documents(), style=st.sampled_from(["yaml", "json"]))
def test_valid_documents_load(folder: Path, document: dict[str, Any], style: str) -> None:
    path = folder / f"valid.{style}"
    path.write_text(dump(document, style), encoding="utf-8")
    result = load_or_error(path)
    assert isinstance(result, Manifest), str(result)
    assert [m.model_id for m in result.models] == [m["model_id"] for m in document["models"]]


# --------------------------------------------------------------------------- plan / apply


@st.composite
def runs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, tuple[str, bool]], bool]:
    """A manifest, what the state already says of some ids, and --forget-orphans."""
    document = draw(valid_documents(max_models=5))
    manifest_ids = [m["model_id"] for m in document["models"]]
    orphans = draw(st.lists(ids, max_size=2, unique=True).map(lambda xs: [x + "-old" for x in xs]))
    known = draw(st.lists(st.sampled_from(manifest_ids), unique=True)) + orphans
    state = {
        model_id: (
            draw(st.sampled_from(["submitted", "failed", "pending"])),
            draw(st.booleans()),  # same fingerprint as the manifest's entry
        )
        for model_id in known
    }
    return document, state, draw(st.booleans())


@pytest.mark.slow
@FEW
@given(run=runs(), flaky=st.booleans())
def test_plan_apply_plan_leaves_nothing_to_do(
    folder: Path, run: tuple[dict[str, Any], dict[str, tuple[str, bool]], bool], flaky: bool
) -> None:
    document, known, forget_orphans = run
    case = folder / f"run-{next(_RUNS)}"
    case.mkdir()
    manifest_path = case / "prod.yaml"
    manifest_path.write_text(dump(document, "yaml"), encoding="utf-8")
    state_path = case / "prod.state.json"
    settings = Settings(
        str(manifest_path),
        endpoint=ENDPOINT,
        state=str(state_path),
        client=ClientOptions(RetryPolicy(max_attempts=3)),
        command="modelsync apply (test)",
        env={**ENV, "MODELSYNC_API_KEY": KEY},
    )
    specs = {spec.model_id: spec for spec in settings.manifest.models}

    # The state before: some models submitted (as now, or with another request), failed,
    # pending, and a few orphans.
    with StateStore(state_path, ENDPOINT) as store:
        for model_id, (status, same) in known.items():
            spec = specs.get(model_id)
            request = spec.request("no") if spec is not None else {"model_id": model_id}
            if not same:
                request = {
                    **request,
                    "revision": "fp32" if request.get("revision") != "fp32" else "fp16",
                }
            store.record(model_id, ModelRecord(fingerprint(request), request, status, attempts=1))

    before = plan(settings).plan
    failed_once: set[str] = set()

    def answer(request: Any, context: Any) -> dict[str, Any]:
        # A flaky API fails the first attempt of every model with a 503: the retries of
        # the same run must still get everything through.
        model_id = request.json()["model_id"]
        if flaky and model_id not in failed_once:
            failed_once.add(model_id)
            context.status_code = 503
            return {"status": "error", "message": "Service temporarily unavailable."}
        return OK

    with rm.Mocker() as api:
        api.post(ENDPOINT, json=answer)
        stop = StopFlag()
        stop.sleep = lambda _seconds: None  # type: ignore[method-assign]  # no test waits
        report = apply(
            settings, ApplyOptions(parallelism=4, forget_orphans=forget_orphans), stop=stop
        ).report
        assert report is not None
        sent = api.call_count
    assert report.exit_code == 0, report.to_json()
    assert sent == len(before.to_submit) * (2 if flaky else 1)  # no model sent twice

    after = plan(settings).plan
    assert not after.has_changes, [(c.model_id, c.action) for c in after.changes]
    assert after.summary["unchanged"] == len(specs)
    orphaned = after.summary["orphan"]
    assert orphaned == (0 if forget_orphans else sum(1 for m in known if m not in specs))
    # What the state keeps was never interpolated: no secret in it.
    assert TOKEN not in state_path.read_text("utf-8")


# --------------------------------------------------------------------------- fingerprints


@FEW
@given(model=valid_models(), seed=st.integers(0, 2**32 - 1))
def test_fingerprint_does_not_depend_on_key_order(
    folder: Path, model: dict[str, Any], seed: int
) -> None:
    items = list(model.items())
    random.Random(seed).shuffle(items)
    shuffled = dict(items)
    labels = model.get("labels")
    if isinstance(labels, dict):
        shuffled["labels"] = dict(reversed(list(labels.items())))
    paths = []
    for name, entry in (("a", model), ("b", shuffled)):
        path = folder / f"order-{name}.yaml"
        path.write_text(dump({"version": 1, "models": [entry]}, "yaml"), encoding="utf-8")
        paths.append(path)
    first, second = (load_manifest(p, ENV).models[0] for p in paths)
    assert first.fingerprint == second.fingerprint
    request = first.request("no")
    reordered = dict(reversed(list(request.items())))
    assert fingerprint(reordered) == fingerprint(request)
    # force_load is how a request is sent, not what is asked for.
    assert fingerprint(first.request("yes")) == fingerprint(request)


# --------------------------------------------------------------------------- schema fast path


def jsonschema_accepts(document: dict[str, Any]) -> bool:
    return bool(schemafile._validator().is_valid(document))


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(model=near_valid_models())
def test_fast_model_check_never_accepts_what_jsonschema_rejects(model: dict[str, Any]) -> None:
    fast = fastcheck._fast_check()
    if fast(model):
        assert jsonschema_accepts({"version": 1, "models": [model]}), model


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    document=valid_documents(max_models=1),
    section=st.sampled_from(["target", "defaults", "version", "extra"]),
    name=st.sampled_from(
        [
            "endpoint",
            "api_key_env",
            "key",
            "revision",
            "model_visibility",
            "force_load",
            "hf_upload",
            "labels",
            "model_subcategory",
            "url",
        ]
    ),
    value=tricky_values,
)
def test_fast_head_check_never_accepts_what_jsonschema_rejects(
    document: dict[str, Any], section: str, name: str, value: Any
) -> None:
    if section in ("version", "extra"):
        document[section] = value
    else:
        document.setdefault(section, {})
        if isinstance(document[section], dict):
            document[section][name] = value
    fast = fastcheck._fast_check()
    if fast.head(document):
        assert jsonschema_accepts({**document, "models": []}), document


@settings(max_examples=100, deadline=None)
@given(model=valid_models())
def test_fast_model_check_takes_the_valid_models(model: dict[str, Any]) -> None:
    # Not a correctness property: it keeps the fast path from silently turning into
    # "always ask jsonschema" (four times slower on a large manifest, DESIGN §7).
    assert fastcheck._fast_check()(model)
    assert jsonschema_accepts({"version": 1, "models": [model]})


def schema_errors(validator: Any, model: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(map(str, e.absolute_path)), e.validator, str(e.validator_value), e.message)
        for e in validator.iter_errors(model)
    )


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(model=near_valid_models())
def test_reduced_model_schema_gives_the_errors_of_the_whole_schema(model: Any) -> None:
    # load_manifest checks each model the fast path doubts against the model schema less
    # what the model certainly satisfies: the errors must be exactly the same.
    fast = fastcheck._fast_check()
    validator = schemafile._validator()
    whole = validator.evolve(schema=fast.model)
    reduced = validator.evolve(schema=fast.reduced(model))
    assert schema_errors(reduced, model) == schema_errors(whole, model), model
