"""Cache bodies rendered once per change: what REST serves from the cached bytes is what a fresh
rendering says, and a change to the object shows at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from modelcache.contract.agent_wire import parse_registration, parse_status_report
from modelcache.contract.objects import normalize_cache, normalize_node_group
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.statuses import cache_status
from tests.coordinator.conftest import cache, fast_settings, node_group, serving

GiB = 1 << 30


def stored(raw: dict[str, object], created: str) -> dict[str, object]:
    metadata = {**raw["metadata"], "creationTimestamp": created, "uid": "u"}  # type: ignore[dict-item]
    return {**raw, "metadata": metadata}


def report(models: dict[str, tuple[str, int]]) -> dict[str, object]:
    return {
        "disk": {"capacityBytes": 200 * GiB, "freeBytes": 100 * GiB},
        "models": [
            {
                "storageKey": storage_key(uri),
                "state": state,
                "bytesDone": done,
                "bytesTotal": 10,
                **({"startedAt": f"2026-11-24T10:0{done % 10}:00Z"} if done else {}),
            }
            for uri, (state, done) in models.items()
        ],
    }


async def test_the_json_rendering_says_what_the_status_says() -> None:
    """Nodes join, report, move between groups and leave; the bytes built from the aggregate's
    pre-rendered entries parse to the status built as objects, key order included."""
    now = [0.0]
    registry = Registry(heartbeat_timeout=10, not_ready_deletion_timeout=5, clock=lambda: now[0])
    for group in ("a100", "h100"):
        registry.upsert_group(normalize_node_group(node_group(group, "80Gi")))
    uris = ["hf://o/a", "hf://o/b"]
    a = normalize_cache(cache("a", uris[0], "1Gi", "a100", "h100"))
    registry.upsert_cache(stored(a, "2026-11-24T10:00:00Z"))
    registry.upsert_cache(
        stored(normalize_cache(cache("b", uris[1], "1Gi", "h100")), "2026-11-24T10:00:01Z")
    )

    def check() -> None:
        for name in registry.caches:
            aggregate = registry.aggregate(name)
            expected = cache_status(
                registry.caches[name], registry.placement, aggregate, registry.conditions, []
            )
            rendered = orjson.loads(registry.rendering(name, 0.0).status)
            assert rendered == expected
            assert list(rendered) == list(expected)
            assert list(rendered["nodeStatus"]) == list(expected["nodeStatus"])
            assert list(rendered["nodeProgress"]) == list(expected["nodeProgress"])

    for i in range(12):
        group = ("a100", "h100")[i % 2]
        body = {"nodeGroup": group, "address": f"http://n{i}:9090", "disk": report({})["disk"]}
        registry.register(f"n{i}", parse_registration(body))
    check()
    for i in range(12):
        states = {uris[0]: ("ModelDownloading", i), uris[1]: ("ModelDownloaded", 10)}
        registry.report(f"n{i}", parse_status_report(report(states)), 1)
    check()
    moved = {"nodeGroup": "a100", "address": "http://n1:9090", "disk": report({})["disk"]}
    registry.register("n1", parse_registration(moved))  # h100 -> a100: holds b outside its groups
    registry.report("n2", parse_status_report(report({uris[0]: ("ModelDownloaded", 10)})), 1)
    registry.forget_node("n3")
    check()
    now[0] = 30.0  # every node missed its heartbeats
    registry.sweep_readiness()
    check()


async def test_a_get_after_a_change_shows_the_change(tmp_path: Path) -> None:
    """Renderings are reused for `status_render_max_age`; a new spec is never served stale, and
    neither is the list holding it."""
    settings = fast_settings(tmp_path / "db.sqlite", status_render_max_age=60.0)
    async with serving(settings) as api:
        await api.put(node_group("a100", "80Gi"))
        await api.put(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        await api.register("n1", "a100")
        first = await api.call("GET", "/v1/localmodelcaches/llama3")
        listed = await api.call("GET", "/v1/localmodelcaches")
        assert listed["items"] == [first]
        await api.put(cache("llama3", "hf://o/llama3", "20Gi", "a100"))
        after = await api.call("GET", "/v1/localmodelcaches/llama3")
        assert after["spec"]["modelSize"] == "20Gi"
        listed = await api.call("GET", "/v1/localmodelcaches")
        assert [i["spec"]["modelSize"] for i in listed["items"]] == ["20Gi"]
        await api.put(cache("mistral", "hf://o/mistral", "1Gi", "a100"))
        listed = await api.call("GET", "/v1/localmodelcaches")
        assert [i["metadata"]["name"] for i in listed["items"]] == ["llama3", "mistral"]
        await api.call("DELETE", "/v1/localmodelcaches/mistral", expect=202)  # its finalizer
        await api.settle()  # no node held it: the finalizer goes
        listed = await api.call("GET", "/v1/localmodelcaches")
        assert [i["metadata"]["name"] for i in listed["items"]] == ["llama3"]


async def test_statuses_are_fresh_once_the_rendering_is_old_enough(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "db.sqlite", status_render_max_age=0.2)
    async with serving(settings) as api:
        await api.put(node_group("a100", "80Gi"))
        await api.put(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        await api.register("n1", "a100")
        await api.call("GET", "/v1/localmodelcaches")
        await api.report("n1", {"hf://o/llama3": "ModelDownloaded"})
        deadline = 50
        for _ in range(deadline):  # within max_age the last rendering may still be served
            listed = await api.call("GET", "/v1/localmodelcaches")
            if listed["items"][0]["status"]["nodeStatus"] == {"n1": "NodeDownloaded"}:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"still {listed['items'][0]['status']['nodeStatus']}")
        single = await api.call("GET", "/v1/localmodelcaches/llama3")
        assert single["status"]["copies"] == {"total": 1, "available": 1, "failed": 0}


async def test_a_report_changes_the_caches_of_the_models_that_changed_only() -> None:
    registry = Registry(heartbeat_timeout=10, not_ready_deletion_timeout=5)
    registry.upsert_group(normalize_node_group(node_group("a100", "80Gi")))
    uris = ["hf://o/a", "hf://o/b"]
    for i, (name, uri) in enumerate(zip("ab", uris, strict=True)):
        raw = normalize_cache(cache(name, uri, "1Gi", "a100"))
        registry.upsert_cache(stored(raw, f"2026-11-24T10:00:0{i}Z"))
    body = {"nodeGroup": "a100", "address": "http://n1:9090", "disk": report({})["disk"]}
    registry.register("n1", parse_registration(body))
    registry.report(
        "n1", parse_status_report(report({u: ("ModelDownloading", 1) for u in uris})), 1
    )
    before = {name: registry.rendering(name, 0.0) for name in "ab"}
    states = {uris[0]: ("ModelDownloading", 2), uris[1]: ("ModelDownloading", 1)}
    registry.report("n1", parse_status_report(report(states)), 1)
    assert registry.rendering("b", 0.0) is before["b"]  # nothing of b changed: not rendered again
    progress = orjson.loads(registry.rendering("a", 0.0).status)["nodeProgress"]
    assert progress == {"n1": {"bytesDone": 2, "bytesTotal": 10}}
