"""Heartbeats: a node that stops reporting turns NotReady one timeout after its last report, and
back to Ready when it reports again, whether or not the sweep skipped ticks in between."""

from __future__ import annotations

from modelcache.contract.agent_wire import parse_registration, parse_status_report
from modelcache.contract.objects import normalize_cache, normalize_node_group
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.registry import Registry
from tests.coordinator.conftest import cache, node_group

GiB = 1 << 30
DISK = {"capacityBytes": 200 * GiB, "freeBytes": 100 * GiB}


def test_nodes_turn_not_ready_a_timeout_after_their_last_report_and_back() -> None:
    now = [0.0]
    registry = Registry(heartbeat_timeout=10, not_ready_deletion_timeout=5, clock=lambda: now[0])
    registry.upsert_group(normalize_node_group(node_group("a100", "80Gi")))
    raw = normalize_cache(cache("llama3", "hf://o/llama3", "1Gi", "a100"))
    registry.upsert_cache({**raw, "metadata": {**raw["metadata"], "uid": "u"}})
    for name in ("n1", "n2"):
        body = {"nodeGroup": "a100", "address": f"http://{name}:9090", "disk": DISK}
        registry.register(name, parse_registration(body))

    def not_ready() -> set[str]:
        registry.sweep_readiness()
        states = registry.aggregate("llama3").node_status()
        return {node for node, state in states.items() if state == "NodeNotReady"}

    def heartbeat(name: str) -> None:
        registry.report(name, parse_status_report({"disk": DISK, "models": []}), 0)

    assert not_ready() == set()
    for t in (4.0, 8.0, 10.0, 12.0, 16.0):  # n1 keeps reporting; n2's last word was at 0
        now[0] = t
        heartbeat("n1")
        assert not_ready() == (set() if t <= 10 else {"n2"}), t
    now[0] = 40.0  # both silent: every node stale, none left whose timeout could run out
    assert not_ready() == {"n1", "n2"}
    heartbeat("n2")  # back: ready again at once, and its timeout watched again
    assert not_ready() == {"n1"}
    now[0] = 50.0
    assert not_ready() == {"n1"}
    now[0] = 50.5
    assert not_ready() == {"n1", "n2"}
    body = {"nodeGroup": "a100", "address": "http://n1:9090", "disk": DISK}
    registry.register("n1", parse_registration(body))  # a registration is a heartbeat too
    assert not_ready() == {"n2"}


def _ten_nodes() -> Registry:
    registry = Registry(heartbeat_timeout=10, not_ready_deletion_timeout=5, clock=lambda: 0.0)
    registry.upsert_group(normalize_node_group(node_group("a100", "80Gi")))
    raw = normalize_cache(cache("llama3", "hf://o/llama3", "1Gi", "a100"))
    registry.upsert_cache({**raw, "metadata": {**raw["metadata"], "uid": "u"}})
    for i in range(10):
        body = {"nodeGroup": "a100", "address": f"http://n{i}:9090", "disk": DISK}
        registry.register(f"n{i}", parse_registration(body))
    return registry


def _seven_reports(registry: Registry) -> None:
    key = storage_key("hf://o/llama3")
    for i in range(7):
        state = "ModelDownloaded" if i % 2 else "ModelDownloading"
        model = {"storageKey": key, "state": state, "bytesDone": i, "bytesTotal": 10}
        registry.report(f"n{i}", parse_status_report({"disk": DISK, "models": [model]}), 0)


def test_catching_up_in_slices_renders_what_a_fresh_aggregate_would() -> None:
    registry = _ten_nodes()
    registry.aggregate("llama3")  # built: from now on changes are pending entries
    _seven_reports(registry)
    slices = 1
    while not registry.catch_up("llama3", 3):
        slices += 1
    assert slices == 3  # 7 changed nodes, 3 at a time
    caught_up = registry.aggregate("llama3")
    fresh_registry = _ten_nodes()
    _seven_reports(fresh_registry)
    fresh = fresh_registry.aggregate("llama3")  # built in one go from the node records
    assert caught_up.node_status() == fresh.node_status()
    assert caught_up.node_status_json() == fresh.node_status_json()
    assert caught_up.progress_json() == fresh.progress_json()
    assert list(caught_up.node_status().values()).count("NodeDownloaded") == 3
