"""The two ways of building a document (modelsync.yamlio) agree, and agree with the node graph.

The event builder takes the usual manifest; the node-graph builder takes all of YAML. Both
must give the same values, problems and positions, and the positions must be the ones
PyYAML's node graph gives (what the loader answered before it dropped the graph).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsync.errors import ManifestError
from modelsync.yamlio import load_yaml_text
from modelsync.yamlio.compose import _Loader
from modelsync.yamlio.events import EventBuilder, NotPlain
from modelsync.yamlio.load import _load_graph

MODEL = """\
  - model_id: majicmix
    url: https://civitai.com/api/download/models/1?token=${T}
    model_format: safetensors
    model_category: stable_diffusion
    labels: {team: portraits, tier: "1"}
"""

PLAIN = [
    "version: 1\nmodels:\n" + MODEL * 3,
    "version: 1\ndefaults:\n  hf_upload: no\n  force_load: yes\nmodels:\n" + MODEL,
    "version: 1\nmodels:\n" + MODEL + "    model_name: 1.10\n    revision: 2024-01-01\n",
    "version: 1\nmodels:\n" + MODEL + "    model_name: !!python/name:os.system x\n",
    "version: 1\nmodels:\n" + MODEL + "    model_format: ckpt\n    model_name: ~\n",
    "version: 1\nmodels:\n" + MODEL + "    yes: 1\n    2: x\n    null: y\n",
    "version: 1\nmodels:\n" + MODEL + "    labels: !!set {a}\n    model_name: <<\n",
    "version: 1\nmodels: !!omap [a, b]\ntarget: !custom {endpoint: x}\n",
    '{"version": 1, "models": [{"model_id": "a", "url": "b", "x": [1, 2.5, null, true]}]}',
    "version: 1\nmodels: [[[[[]]]]]\nother: ! 12\nthird: !!str 3\nempty:\n",
    '"2024-01-01": a\nb: {2024-01-01: c, "2024-01-01": d}\n',
    "- 1\n- two\n- [3, {four: 4}]\n",
    "just text\n",
    "42\n",
]

NEEDS_GRAPH = [
    "version: 1\nmodels:\n" + MODEL + "  - &m {model_id: b}\n  - *m\n",
    "base: &b {revision: fp16, hf_upload: no}\nmodels:\n  - <<: *b\n    model_id: x\n",
    "models:\n  - <<: [{a: 1}, {a: 2, b: 1.10}]\n    c: 3\n",
    "? [a, b]\n: c\nd: e\n",
    "version: 1\nmodels: " + "[" * 70 + "]" * 70 + "\n",
    "a: 1\n---\nb: 2\n",
    "# only a comment\n",
    "a: &x 1\nb: &x 2\n",
]


def load_events(text: str) -> Any:
    loader = _Loader(text)
    try:
        builder = EventBuilder(loader)
        return builder.document(), builder
    finally:
        loader.dispose()


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def graph_position(root: yaml.Node, path: tuple[Any, ...], of_key: bool) -> tuple[int, int]:
    """Where the node graph places ``path`` (mappings here have no merges)."""
    node, mark = root, root.start_mark
    for step in path:
        if isinstance(node, yaml.SequenceNode):
            node = node.value[step]
            mark = node.start_mark
            continue
        assert isinstance(node, yaml.MappingNode)
        for key_node, value_node in node.value:
            if key_node.value == str(step):
                node = value_node
                plain = of_key or isinstance(node, yaml.ScalarNode)
                mark = key_node.start_mark if plain else node.start_mark
                break
    return mark.line + 1, mark.column + 1


def compare(text: str) -> None:
    graph = _load_graph(text, "m.yaml")
    data, builder = load_events(text)
    assert data == graph.data
    assert [type(v) for v in paths(data)] == [type(v) for v in paths(graph.data)]
    assert [type(k) for p in paths(data) for k in p] == [
        type(k) for p in paths(graph.data) for k in p
    ]
    assert tuple(builder.problems) == graph.problems
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    events = load_yaml_text(text, "m.yaml")
    for path in paths(data):
        for of_key in (True, False):
            where = events.position(path, of_key=of_key)
            assert where == graph.position(path, of_key=of_key), path
            assert (where.line, where.column) == graph_position(root, path, of_key), path
        assert events.source_text(path) == graph.source_text(path), path


@pytest.mark.parametrize("text", PLAIN)
def test_event_and_graph_builders_agree(text: str) -> None:
    compare(text)


@pytest.mark.parametrize("text", NEEDS_GRAPH)
def test_what_the_event_builder_does_not_take_goes_to_the_graph(text: str) -> None:
    with pytest.raises(NotPlain):
        load_events(text)


def test_duplicate_keys_agree_and_the_second_value_is_not_built() -> None:
    text = "version: 1\nversion: [!!python/x 1, {a: 1}]\nmodels: []\nmodels: x\n"
    compare(text)
    loaded = load_yaml_text(text, "m.yaml")
    assert [p.message.split(";")[0] for p in loaded.problems] == [
        "duplicate key 'version' (first at line 1)",
        "duplicate key 'models' (first at line 3)",
    ]


def test_merged_keys_are_placed_where_the_source_wrote_them() -> None:
    text = "base: &b {revision: fp16, n: 1.10}\nm:\n  <<: *b\n  model_id: x\n"
    loaded = load_yaml_text(text, "m.yaml")
    assert loaded.data["m"] == {"model_id": "x", "revision": "fp16", "n": 1.1}
    assert (loaded.position(("m", "revision")).line, loaded.position(("m", "model_id")).line) == (
        1,
        4,
    )
    assert loaded.source_text(("m", "n")) == "1.10"


def test_item_lines_are_where_each_item_starts() -> None:
    loaded = load_yaml_text("models:\n" + MODEL * 3, "m.yaml")
    assert loaded.item_lines(("models",)) == [2, 7, 12]


def test_a_syntax_error_after_a_problem_is_what_is_reported() -> None:
    with pytest.raises(ManifestError) as caught:
        load_yaml_text("a: !!python/x 1\nb: [1,\n", "m.yaml")
    assert "YAML syntax error" in str(caught.value)


scalars = st.one_of(
    st.text(max_size=6),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["yes", "no", "1.10", "2024-01-01", "<<", "~", "0x1F", "", " a"]),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, flow=st.booleans())
def test_any_plain_document_builds_the_same_both_ways(document: Any, flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    with contextlib.suppress(NotPlain):  # a '<<' key the dump left plain: the graph's alone
        compare(text)


def test_a_quoted_text_does_not_make_the_same_plain_scalar_text() -> None:
    loaded = load_yaml_text('a: "yes"\nb: yes\nc: team\nd: team\ne: "1.10"\nf: 1.10\n', "m.yaml")
    assert loaded.data == {"a": "yes", "b": True, "c": "team", "d": "team", "e": "1.10", "f": 1.1}


def test_many_problems_in_one_mapping_take_linear_time() -> None:
    count = 20_000
    text = "a: 0\n" + "".join(f"k{i}: 1\na: {i}\n" for i in range(count))
    start = time.perf_counter()
    loaded = load_yaml_text(text, "m.yaml")
    positions = [loaded.position((f"k{i}",)).line for i in range(0, count, 7)]
    elapsed = time.perf_counter() - start
    assert len(loaded.problems) == count
    assert loaded.problems[-1].message.startswith("duplicate key 'a' (first at line 1)")
    assert positions[:2] == [2, 16]
    assert elapsed < 5.0, f"{elapsed:.1f} s"
