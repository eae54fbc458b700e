"""Admission per node group: first come first served, shared copies, numbers in every refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelcache.contract.objects import parse_cache, parse_node_group
from modelcache.coordinator.placement import EXCEEDS_LIMIT, GROUP_FULL, GROUP_NOT_FOUND, place

T0 = datetime(2026, 11, 24, tzinfo=UTC)


def _cache(name: str, uri: str, size: str, groups: list[str], minute: int) -> Any:
    created = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return parse_cache(
        {
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": groups},
        }
    )


def _groups(**limits: str) -> Any:
    return {
        name: parse_node_group({"metadata": {"name": name}, "spec": {"storageLimit": limit}})
        for name, limit in limits.items()
    }


def test_older_caches_keep_their_place_and_the_refusal_gives_numbers() -> None:
    caches = [
        _cache("llama3", "hf://meta/llama3", "10Gi", ["a100"], minute=2),
        _cache("mistral", "hf://m/mistral", "6Gi", ["a100"], minute=1),
    ]
    placement = place(caches, _groups(a100="8Gi"))
    assert placement.admitted_groups("mistral") == ("a100",)
    (refusal,) = placement.admissions["llama3"]
    assert not refusal.admitted
    assert refusal.reason == EXCEEDS_LIMIT  # 10Gi > 8Gi on its own
    caches.append(_cache("phi", "hf://ms/phi", "3Gi", ["a100"], minute=3))
    placement = place(caches, _groups(a100="8Gi"))
    (phi,) = placement.admissions["phi"]
    assert phi.reason == GROUP_FULL
    assert phi.message.startswith(
        "phi (3Gi) does not fit node group a100: 6Gi of 8Gi storageLimit already used"
    )
    assert [m.caches for m in placement.models_by_group["a100"]] == [("mistral",)]


def test_a_newer_cache_never_pushes_out_an_older_one_when_the_limit_shrinks() -> None:
    caches = [
        _cache("new", "hf://o/new", "4Gi", ["a100"], minute=5),
        _cache("old", "hf://o/old", "4Gi", ["a100"], minute=1),
    ]
    assert place(caches, _groups(a100="8Gi")).admitted_groups("new") == ("a100",)
    shrunk = place(caches, _groups(a100="6Gi"))
    assert shrunk.admitted_groups("old") == ("a100",)
    assert shrunk.admitted_groups("new") == ()


def test_same_source_shares_one_copy_and_costs_nothing_more() -> None:
    caches = [
        _cache("a", "hf://o/m", "5Gi", ["a100"], minute=1),
        _cache("b", "hf://o/m", "5Gi", ["a100"], minute=2),
    ]
    placement = place(caches, _groups(a100="6Gi"))
    assert placement.admitted_groups("b") == ("a100",)
    (model,) = placement.models_by_group["a100"]
    assert model.caches == ("a", "b")
    assert placement.used_by_group["a100"] == 5 << 30


def test_missing_group_is_reported_and_other_groups_still_admit() -> None:
    placement = place(
        [_cache("m", "hf://o/m", "1Gi", ["h100", "a100"], minute=1)], _groups(a100="8Gi")
    )
    h100, a100 = placement.admissions["m"]
    assert (h100.admitted, h100.reason) == (False, GROUP_NOT_FOUND)
    assert "create a LocalModelNodeGroup named 'h100'" in h100.message
    assert a100.admitted
    assert placement.desired_for_group("h100") == ()


def test_decimal_sizes_print_as_kubernetes_does() -> None:
    placement = place(
        [
            _cache("x", "hf://o/x", "500M", ["g"], minute=1),
            _cache("y", "hf://o/y", "600M", ["g"], minute=2),
        ],
        _groups(g="1G"),
    )
    (y,) = placement.admissions["y"]
    assert y.message.startswith("y (600M) does not fit node group g: 500M of 1G storageLimit")
