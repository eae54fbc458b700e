"""The coordinator on `--store kube`, against the fake API server, through the real
kubernetes_asyncio client: list+watch, 410 re-list, finalizers, status subresource, 409 retries,
coalesced writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.settings import StoreSettings
from tests.coordinator.conftest import Api, cache, fast_settings, node_group, serving
from tests.fakekube.fixtures import FakeKubeHandle

LLAMA = "hf://meta-llama/meta-llama-3-8b-instruct"
LABEL = "serving.kserve.io/nodegroup"
CACHES, GROUPS, NODES = "localmodelcaches", "localmodelnodegroups", "localmodelnodes"


def kube_node(name: str, group: str | None, *, ready: bool = True) -> dict[str, Any]:
    labels = {LABEL: group} if group else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll until `check` returns something truthy without raising; return it."""
    last: BaseException | None = None
    async with asyncio.timeout(within):
        while True:
            try:
                result = check()
                if result:
                    return result
            except (AssertionError, KeyError) as e:
                last = e
            await asyncio.sleep(0.02)
    raise AssertionError(f"never true: {last}")  # pragma: no cover


@pytest.fixture
async def kube_api(fake_kube: FakeKubeHandle, tmp_path: Path) -> AsyncIterator[Api]:
    fake_kube.create(GROUPS, node_group("a100", "80Gi"))
    fake_kube.create(GROUPS, node_group("h100", "80Gi"))
    fake_kube.create("nodes", kube_node("gpu-a100-0", "a100"))
    fake_kube.create("nodes", kube_node("gpu-a100-1", "a100"))
    fake_kube.create("nodes", kube_node("gpu-h100-0", "h100"))
    fake_kube.create(CACHES, cache("llama3", LLAMA, "16Gi", "a100"))
    settings = fast_settings(
        tmp_path / "unused.db",
        store=StoreSettings("kube", kubeconfig=fake_kube.kubeconfig),
        status_interval=30.0,  # statuses are written when a test says `settle()`, not by chance
    )
    async with serving(settings) as api:
        for plural in (CACHES, GROUPS, "nodes"):
            await fake_kube.wait_for_watches(plural)
        yield api


async def test_cluster_objects_are_loaded_and_statuses_written_back(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_api
    llama = fake_kube.get(CACHES, "llama3")
    assert llama["metadata"]["finalizers"] == ["localmodel.kserve.io/finalizer"]
    # Agents in a cluster register without a group: their node's label decides.
    for node in ("gpu-a100-0", "gpu-a100-1", "gpu-h100-0"):
        registered = await api.register(node, None)
        assert registered["nodeGroup"] == node.split("-")[1]
    desired = await api.desired("gpu-a100-0")
    assert [m["storageKey"] for m in desired["models"]] == [storage_key(LLAMA)]
    assert (await api.desired("gpu-h100-0"))["models"] == []
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    await api.report("gpu-a100-1", {LLAMA: "ModelDownloading"})
    await api.settle()
    status = fake_kube.get(CACHES, "llama3")["status"]
    assert status["nodeStatus"] == {"gpu-a100-0": "NodeDownloaded", "gpu-a100-1": "NodeDownloading"}
    assert status["copies"] == {"total": 2, "available": 1, "failed": 0}
    local = fake_kube.get(NODES, "gpu-a100-1")
    assert local["spec"]["localModels"][0]["modelName"] == "llama3"
    assert local["status"]["modelStatus"] == {"llama3": "ModelDownloading"}
    assert fake_kube.get(GROUPS, "a100")["status"]["used"] == "16Gi"
    # Statuses went through the status subresource as merge patches, spec untouched by them.
    status_writes = [r for r in fake_kube.writes(CACHES) if r.path.endswith("/status")]
    assert status_writes
    assert all(r.method == "PATCH" for r in status_writes)


async def test_watch_follows_caches_groups_and_nodes(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_api
    registry = api.coordinator.registry
    fake_kube.create(CACHES, cache("phi", "hf://microsoft/phi-3", "8Gi", "h100"))
    await eventually(lambda: "phi" in registry.caches)
    await eventually(lambda: fake_kube.get(CACHES, "phi")["metadata"].get("finalizers"))
    await api.register("gpu-a100-1", None)
    fake_kube.patch("nodes", "gpu-a100-1", {"metadata": {"labels": {LABEL: "h100"}}})
    await eventually(lambda: registry.nodes["gpu-a100-1"].group == "h100")
    desired = await api.desired("gpu-a100-1")
    assert [m["caches"] for m in desired["models"]] == [["phi"]]
    fake_kube.patch(GROUPS, "h100", {"spec": {"storageLimit": "4Gi"}})
    await eventually(lambda: registry.placement.admitted_groups("phi") == ())
    fake_kube.delete("nodes", "gpu-a100-1")
    await eventually(lambda: "gpu-a100-1" not in registry.nodes)
    await api.settle()
    assert not fake_kube.exists(NODES, "gpu-a100-1")


async def test_a_cache_gets_one_finalizer_however_many_events_lack_it(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    registry = kube_api.coordinator.registry
    fake_kube.create(CACHES, cache("phi", "hf://microsoft/phi-3", "8Gi", "h100"))
    # A second event without the finalizer, queued before the coordinator has added it.
    fake_kube.patch(CACHES, "phi", {"metadata": {"labels": {"team": "search"}}})
    # Events of one watch are handled in order: once a later cache is in, phi's are done.
    fake_kube.create(CACHES, cache("later", "hf://o/later", "1Gi", "h100"))
    await eventually(lambda: "later" in registry.caches)
    assert fake_kube.get(CACHES, "phi")["metadata"]["finalizers"] == [
        "localmodel.kserve.io/finalizer"
    ]


async def test_a_410_relists_and_notices_what_changed_meanwhile(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    registry = kube_api.coordinator.registry
    fake_kube.bookmark()
    # All in one synchronous step, so no watch sees it live: the watches end, a cache goes
    # away without finalizers, a node appears, and the history is compacted.
    fake_kube.drop_watches()
    fake_kube.patch(CACHES, "llama3", {"metadata": {"finalizers": None}})
    fake_kube.delete(CACHES, "llama3")
    fake_kube.create("nodes", kube_node("gpu-h100-1", "h100"))
    fake_kube.compact()
    await eventually(lambda: "llama3" not in registry.caches and "gpu-h100-1" in registry.nodes)
    assert any("resourceVersion" in r.query for r in fake_kube.requests if r.method == "GET")


async def test_deletion_keeps_the_finalizer_until_the_files_are_gone(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_api
    await api.register("gpu-a100-0", None)
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    fake_kube.delete(CACHES, "llama3")  # kubectl delete: the finalizer holds it
    registry = api.coordinator.registry
    await eventually(lambda: registry.caches["llama3"].deleting)
    assert (await api.desired("gpu-a100-0"))["models"] == []
    await api.settle()
    assert fake_kube.exists(CACHES, "llama3")
    await api.report("gpu-a100-0", {})
    await api.settle()
    await eventually(lambda: not fake_kube.exists(CACHES, "llama3"))
    await eventually(lambda: "llama3" not in registry.caches)


async def test_conflicts_are_retried_and_writes_coalesced(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_api
    await api.register("gpu-a100-0", None)
    await api.settle()
    before = len(fake_kube.writes(CACHES))
    fake_kube.conflict_next(CACHES, "llama3", times=2)
    for done in range(1, 21):  # twenty reports between two ticks
        body = {
            "disk": {"capacityBytes": 100, "freeBytes": 50},
            "models": [
                {
                    "storageKey": storage_key(LLAMA),
                    "state": "ModelDownloading",
                    "bytesDone": done,
                    "bytesTotal": 20,
                }
            ],
        }
        await api.call("POST", "/v1/agents/gpu-a100-0/status", expect=204, json=body)
    await api.settle()
    cache_writes = fake_kube.writes(CACHES)[before:]
    # two refused by 409, then one that lands: the twenty reports cost one write
    assert len(cache_writes) == 3
    status = fake_kube.get(CACHES, "llama3")["status"]
    assert status["nodeProgress"]["gpu-a100-0"]["bytesDone"] == 20


async def test_rest_writes_go_through_the_api_server(
    kube_api: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_api
    created = await api.put(cache("phi", "hf://microsoft/phi-3", "8Gi", "h100"), expect=201)
    assert created["metadata"]["uid"] == fake_kube.get(CACHES, "phi")["metadata"]["uid"]
    assert fake_kube.get(CACHES, "phi")["metadata"]["finalizers"] == [
        "localmodel.kserve.io/finalizer"
    ]
    await api.put(cache("phi", "hf://microsoft/phi-3", "9Gi", "h100"), expect=200)
    assert fake_kube.get(CACHES, "phi")["spec"]["modelSize"] == "9Gi"
    await api.call("DELETE", "/v1/localmodelcaches/phi", expect=202)
    await api.settle()  # no node held it: the finalizer goes at once
    await eventually(lambda: not fake_kube.exists(CACHES, "phi"))
