"""A node's report read back from the LocalModelNode a coordinator wrote renders the same
statuses again: what a new leader writes before the agents speak to it regresses nothing."""

from __future__ import annotations

import copy
from typing import Any

from modelcache.contract.agent_wire import Disk, ModelReport, Registration, StatusReport
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.restoring import restore_from_node_object
from tests.coordinator.conftest import cache, node_group

LLAMA, MISTRAL = "hf://meta/llama", "hf://mistral/7b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def model(uri: str, state: str, done: int) -> ModelReport:
    return ModelReport(
        storage_key(uri),
        state,  # type: ignore[arg-type]
        done,
        100,
        5.0 if state == "ModelDownloading" else 0.0,
        "",
        "",
        "2026-11-24T10:00:00Z",
        "2026-11-24T10:05:00Z" if state == "ModelDownloaded" else None,
    )


def cluster(clock: Clock) -> Registry:
    registry = Registry(heartbeat_timeout=30, not_ready_deletion_timeout=600, clock=clock)
    registry.upsert_group(node_group("a100", "80Gi"))
    registry.upsert_cache(cache("llama", LLAMA, "1Gi", "a100"))
    registry.upsert_cache(cache("mistral", MISTRAL, "1Gi", "a100"))
    for node in ("n0", "n1"):
        registry.upsert_cluster_node(node, "a100", True)
    return registry


def written(registry: Registry) -> dict[str, Any]:
    """What the store holds after a status write: every object with its status."""
    return {
        "caches": {n: registry.cache_with_status(n)["status"] for n in sorted(registry.caches)},
        "nodes": {n: registry.node_object(n) for n in sorted(registry.nodes)},
    }


def restored(before: Registry, clock: Clock) -> Registry:
    after = cluster(clock)
    # The cache objects as listed carry their statuses (and the conditions' times).
    for name, raw in before.cache_objects.items():
        with_status = {**raw, "status": before.cache_with_status(name)["status"]}
        after.upsert_cache(copy.deepcopy(with_status))
    for name in sorted(before.nodes):
        restore_from_node_object(after, copy.deepcopy(before.node_object(name)))
    return after


def test_restored_reports_render_the_statuses_that_were_written() -> None:
    clock = Clock()
    before = cluster(clock)
    before.register("n0", Registration(None, "http://n0:9090", Disk(200, 100)))
    before.register("n1", Registration(None, "http://n1:9090", Disk(200, 100)))
    reports = {
        storage_key(LLAMA): model(LLAMA, "ModelDownloaded", 100),
        storage_key(MISTRAL): model(MISTRAL, "ModelDownloading", 40),
    }
    before.report("n1", StatusReport(Disk(200, 90), reports), 3)
    failed = {storage_key(LLAMA): model(LLAMA, "ModelDownloadError", 0)}
    before.report("n0", StatusReport(Disk(200, 100), failed), 3)
    expected = written(before)

    clock.now += 5  # the handover
    after = restored(before, clock)
    assert written(after) == expected
    n1 = after.nodes["n1"]
    assert n1.registration is not None
    assert n1.registration.node_group is None  # the Node's label says a100: follow the label
    assert n1.report == StatusReport(Disk(200, 90), reports)

    clock.now += 29  # within a heartbeat timeout of the takeover: still Ready
    after.sweep_readiness()
    assert after.cache_with_status("llama")["status"]["nodeStatus"]["n1"] == "NodeDownloaded"
    clock.now += 2  # the agent never came back
    after.sweep_readiness()
    assert after.cache_with_status("llama")["status"]["nodeStatus"]["n1"] == "NodeNotReady"


def test_a_node_not_ready_then_is_not_ready_now_and_a_deletion_still_waits_for_it() -> None:
    clock = Clock()
    before = cluster(clock)
    before.register("n1", Registration(None, "http://n1:9090", Disk(200, 100)))
    held = {storage_key(LLAMA): model(LLAMA, "ModelDownloaded", 100)}
    before.report("n1", StatusReport(Disk(200, 90), held), 1)
    clock.now += 31
    before.sweep_readiness()
    assert before.node_object("n1")["status"]["ready"] is False

    after = restored(before, clock)
    assert after.cache_with_status("llama")["status"]["nodeStatus"]["n1"] == "NodeNotReady"
    raw = {**after.cache_objects["llama"]}
    raw["metadata"] = {**raw["metadata"], "deletionTimestamp": "2026-11-24T11:00:00Z"}
    after.upsert_cache(raw)
    progress = after.deletion_progress(after.caches["llama"])
    assert progress.waiting_for == ("n1",)  # not given up on: its files are still there
    clock.now += 601
    assert after.deletion_progress(after.caches["llama"]).given_up_on == ("n1",)


def test_a_node_without_a_report_or_with_an_unreadable_one_waits_for_its_agent() -> None:
    registry = cluster(Clock())
    never = {"metadata": {"name": "n0"}, "spec": {"localModels": []}, "status": {"ready": False}}
    assert not restore_from_node_object(registry, never)
    broken = {
        "metadata": {"name": "n1"},
        "status": {
            "disk": {"capacityBytes": 1, "freeBytes": 1},
            "modelDetails": {"llama": {"storageKey": "short", "state": "ModelDownloaded"}},
        },
    }
    assert not restore_from_node_object(registry, broken)
    assert registry.nodes["n1"].report is None
