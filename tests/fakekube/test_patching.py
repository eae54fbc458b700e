"""The patch formats and selectors the fake server applies, checked as pure functions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakekube.patches import PatchApplyError, PatchFormatError, json_patch, merge_patch
from tests.fakekube.selectors import parse_selector

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(json_objects, json_objects)
def test_merge_patch_is_idempotent(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(json_objects)
def test_merge_patch_onto_nothing_drops_nulls(target: dict[str, Any]) -> None:
    assert merge_patch(target, {}) == target
    merged = merge_patch({}, target)
    assert None not in merged.values()
    assert set(merged) == {k for k, v in target.items() if v is not None}


def test_merge_patch_rfc7386_examples() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": None}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {}}
    assert target["c"] == {"d": "e", "f": "g"}, "the target is not changed in place"


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "k~/": 1}
    ops = [
        {"op": "add", "path": "/a/b/1", "value": 9},
        {"op": "remove", "path": "/a/b/0"},
        {"op": "copy", "from": "/a/b", "path": "/c"},
        {"op": "move", "from": "/k~0~1", "path": "/d"},
        {"op": "test", "path": "/d", "value": 1},
    ]
    assert json_patch(doc, ops) == {"a": {"b": [9, 2]}, "c": [9, 2], "d": 1}
    assert doc == {"a": {"b": [1, 2]}, "k~/": 1}


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ({"op": "add"}, PatchFormatError),  # an object, not a list of operations
        ([{"op": "frobnicate", "path": "/a"}], PatchFormatError),
        ([{"op": "add", "path": "a", "value": 1}], PatchFormatError),
        ([{"op": "add", "path": "/a"}], PatchFormatError),
        ([{"op": "remove", "path": "/missing"}], PatchApplyError),
        ([{"op": "replace", "path": "/missing", "value": 1}], PatchApplyError),
        ([{"op": "add", "path": "/x/y", "value": 1}], PatchApplyError),
        ([{"op": "add", "path": "/l/5", "value": 1}], PatchApplyError),
        ([{"op": "test", "path": "/a", "value": 2}], PatchApplyError),
        ([{"op": "move", "from": "/m", "path": "/m/n"}], PatchApplyError),
    ],
)
def test_json_patch_errors(ops: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        json_patch({"a": 1, "l": [], "m": {}}, ops)


@pytest.mark.parametrize(
    ("labels", "fields", "matching"),
    [
        ("", "", {"a", "b", "c"}),
        ("tier", "", {"a", "b"}),
        ("!tier", "", {"c"}),
        ("tier=gold", "", {"a"}),
        ("tier!=gold", "", {"b", "c"}),
        ("tier in (gold,silver),zone", "", {"a"}),
        ("tier notin (gold)", "", {"b", "c"}),
        ("example.com/team=ml", "", {"b"}),
        ("", "metadata.name=b", {"b"}),
        ("", "metadata.name!=b,metadata.name!=c", {"a"}),
    ],
)
def test_selectors(labels: str, fields: str, matching: set[str]) -> None:
    objects: list[dict[str, Any]] = [
        {"metadata": {"name": "a", "labels": {"tier": "gold", "zone": "x"}}},
        {"metadata": {"name": "b", "labels": {"tier": "silver", "example.com/team": "ml"}}},
        {"metadata": {"name": "c"}},
    ]
    selector = parse_selector(labels, fields)
    assert {o["metadata"]["name"] for o in objects if selector.matches(o)} == matching


@pytest.mark.parametrize(
    ("labels", "fields"),
    [("tier=(", ""), ("-bad=1", ""), ("a=b c", ""), ("", "spec.x=1"), ("", "metadata.name")],
)
def test_selectors_the_server_refuses(labels: str, fields: str) -> None:
    with pytest.raises(ValueError, match=r"selector|requirement"):
        parse_selector(labels, fields)
