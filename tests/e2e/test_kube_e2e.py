"""The issue's scenario 6: the whole system against the Kubernetes store on the fake API server.

Caches and node groups are CRs in the fake server, agents learn their node group from their own
Node's label (as in a DaemonSet pod), and the coordinator writes LocalModelCache status and
LocalModelNode objects back to the server, where a user's `kubectl get` would see them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelcache.agent.settings import KubeAccess
from modelcache.contract.objects import CACHE_FINALIZER
from modelcache.coordinator.settings import StoreSettings
from tests.coordinator.conftest import cache, fast_settings, node_group
from tests.coordinator.test_kube_store import CACHES, GROUPS, LABEL, NODES, kube_node
from tests.e2e.conftest import REPO_URI, Cluster, eventually
from tests.fakekube.fixtures import FakeKubeHandle
from tests.hub_origin import HubFixture

A100 = ("gpu-a100-0", "gpu-a100-1")
H100 = "gpu-h100-0"
ALL_NODES = (*A100, H100)


@pytest.fixture
async def kube_cluster(
    tmp_path: Path, hub: HubFixture, fake_kube: FakeKubeHandle
) -> AsyncIterator[Cluster]:
    """A coordinator on `--store kube` whose cluster holds three labelled GPU nodes and two node
    groups as CRs; agents are started by each test."""
    async with running_kube_cluster(tmp_path, hub, fake_kube) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def running_kube_cluster(
    tmp_path: Path, hub: HubFixture, fake_kube: FakeKubeHandle, **overrides: Any
) -> AsyncIterator[Cluster]:
    """`kube_cluster`, with coordinator settings changed by `overrides`."""
    for node in ALL_NODES:
        fake_kube.create("nodes", kube_node(node, node.split("-")[1]))
    fake_kube.create(GROUPS, node_group("a100", "10Gi"))
    fake_kube.create(GROUPS, node_group("h100", "10Gi"))
    settings = fast_settings(
        tmp_path / "unused.db",
        store=StoreSettings("kube", kubeconfig=fake_kube.kubeconfig),
        **overrides,
    )
    running = Cluster(hub, tmp_path / "nodes", settings)
    await running.start_coordinator()
    try:
        for plural in (CACHES, GROUPS, "nodes"):
            await fake_kube.wait_for_watches(plural)
        yield running
    finally:
        # As in the embedded-store cluster: the coordinator first, then the agents.
        if running._coordinator_stack is not None:
            await running.stop_coordinator()
        await running.stop_all()


async def _agents_from_node_labels(cluster: Cluster, fake_kube: FakeKubeHandle) -> None:
    """Start one agent per node with no --node-group, as a DaemonSet pod does."""
    access = KubeAccess(api_url=fake_kube.url)
    for node in ALL_NODES:
        await cluster.start_agent(node, None, kube=access)


async def _registered_groups(cluster: Cluster) -> dict[str, Any]:
    """Each agent's own view (GET /readyz), once it has registered."""
    groups: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for node, (_, url) in cluster.agents.items():
            async with http.get(f"{url}/readyz") as response:
                body = await response.json()
                groups[node] = body["nodeGroup"] if body["registered"] else "unregistered"
    return groups


def _node_status(fake_kube: FakeKubeHandle, name: str) -> dict[str, Any]:
    status: dict[str, Any] = fake_kube.get(CACHES, name).get("status") or {}
    return dict(status.get("nodeStatus") or {})


async def test_cache_crs_land_on_the_labelled_nodes_and_status_is_written_back(
    kube_cluster: Cluster, fake_kube: FakeKubeHandle
) -> None:
    cluster = kube_cluster
    # The KServe spelling of the group list (`nodeGroup`), as a kubectl-applied CR would carry.
    tiny = cache("tiny", REPO_URI, "10Mi")
    tiny["spec"] = {**tiny["spec"], "nodeGroup": ["a100"]}
    del tiny["spec"]["nodeGroups"]
    fake_kube.create(CACHES, tiny)
    await _agents_from_node_labels(cluster, fake_kube)

    # Each agent read its group from its own Node and sent it when registering.
    expected = {node: node.split("-")[1] for node in ALL_NODES}

    async def registered() -> bool:
        return await _registered_groups(cluster) == expected

    await eventually(registered, "every agent registered with its Node's label", 5)
    registry = cluster.api.coordinator.registry
    for node, group in expected.items():
        registration = registry.nodes[node].registration
        assert registration is not None, node
        assert registration.node_group == group, node
    node_reads = {r.path for r in fake_kube.requests if r.method == "GET"}
    assert {f"/api/v1/nodes/{node}" for node in ALL_NODES} <= node_reads

    def downloaded() -> bool:
        status = _node_status(fake_kube, "tiny")
        return status == {node: "NodeDownloaded" for node in A100}

    await eventually(downloaded, "the CR's status shows both a100 nodes NodeDownloaded", 10)
    assert all(cluster.holds_model(node) for node in A100)
    assert list((cluster.root / H100 / "models").iterdir()) == []

    written = fake_kube.get(CACHES, "tiny")
    assert written["metadata"]["finalizers"] == [CACHE_FINALIZER]
    assert written["status"]["copies"] == {"available": 2, "total": 2, "failed": 0}
    for node in A100:
        local = fake_kube.get(NODES, node)
        assert [m["modelName"] for m in local["spec"]["localModels"]] == ["tiny"], node
        assert local["status"]["modelStatus"] == {"tiny": "ModelDownloaded"}, node
    if fake_kube.exists(NODES, H100):  # written or not, it must not claim the model
        assert not (fake_kube.get(NODES, H100).get("status") or {}).get("modelStatus")


async def test_a_group_added_by_patch_then_the_cr_deleted_behind_its_finalizer(
    kube_cluster: Cluster, fake_kube: FakeKubeHandle
) -> None:
    cluster = kube_cluster
    fake_kube.create(CACHES, cache("tiny", REPO_URI, "10Mi", "a100"))
    access = KubeAccess(api_url=fake_kube.url)
    for node in ALL_NODES:
        # A grace long enough to see the finalizer hold the CR while the files are still there.
        await cluster.start_agent(node, None, kube=access, deletion_grace=1.0)
    await eventually(
        lambda: all(cluster.holds_model(node) for node in A100), "a100 nodes pulled it", 10
    )
    assert not cluster.model_dir(H100).exists()

    fake_kube.patch(CACHES, "tiny", {"spec": {"nodeGroups": ["a100", "h100"]}})

    def all_three() -> bool:
        return _node_status(fake_kube, "tiny") == {node: "NodeDownloaded" for node in ALL_NODES}

    await eventually(all_three, "the h100 node pulled it after the patch", 10)
    assert cluster.holds_model(H100)
    assert fake_kube.get(NODES, H100)["status"]["modelStatus"] == {"tiny": "ModelDownloaded"}

    fake_kube.delete(CACHES, "tiny")  # kubectl delete: only a deletionTimestamp, for now
    registry = cluster.api.coordinator.registry

    def deleting() -> bool:
        seen = registry.caches.get("tiny")
        return seen is not None and seen.deleting

    await eventually(deleting, "the coordinator saw the delete", 5)
    held = fake_kube.get(CACHES, "tiny")
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == [CACHE_FINALIZER]
    assert all(cluster.holds_model(node) for node in ALL_NODES)

    def gone() -> bool:
        if fake_kube.exists(CACHES, "tiny"):
            return False
        # Released only after every node reported the files gone, never before.
        left = [node for node in ALL_NODES if cluster.model_dir(node).exists()]
        assert not left, f"the CR went while {left} still held the files"
        return True

    await eventually(gone, "the CR removed once no node holds the files", 10)
    for node in ALL_NODES:
        assert list((cluster.root / node / "models").iterdir()) == [], node
        assert "tiny" not in (fake_kube.get(NODES, node).get("status") or {}).get("modelStatus", {})


async def test_a_relabelled_node_moves_to_its_new_group(
    kube_cluster: Cluster, fake_kube: FakeKubeHandle
) -> None:
    """The agent's label read wins at the coordinator, so the agent must notice a relabel."""
    await _agents_from_node_labels(kube_cluster, fake_kube)
    fake_kube.create(CACHES, cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(
        lambda: all(kube_cluster.holds_model(node) for node in A100), "a100 nodes pulled it", 10
    )
    assert not kube_cluster.model_dir(H100).exists()

    fake_kube.patch("nodes", H100, {"metadata": {"labels": {LABEL: "a100"}}})

    async def moved() -> bool:
        return bool((await _registered_groups(kube_cluster))[H100] == "a100")

    await eventually(moved, "the agent registered again with its new group", 10)
    await eventually(lambda: kube_cluster.holds_model(H100), "it pulled the a100 cache", 10)
    await eventually(
        lambda: set(_node_status(fake_kube, "tiny")) == set(ALL_NODES), "status lists it", 10
    )
