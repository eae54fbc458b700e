"""Issue 5's HA scenario end to end: two coordinator replicas on the fake API server behind a
Service (a proxy to the Ready replica whose pod carries the leader label, which both replicas'
readiness alone would not single out), a real agent pulling from the Hub origin. The
leader is killed; the agent, retrying through the Service, carries on with the new leader, which
handles what happens next: a cache deleted, its files removed, its finalizer released."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelcache.agent.settings import KubeAccess
from modelcache.contract.objects import CACHE_FINALIZER
from tests.coordinator.conftest import cache, fast_settings, node_group
from tests.coordinator.replicas import Replica, Start, labelled, replicas
from tests.coordinator.tcp_proxy import service
from tests.coordinator.test_kube_store import CACHES, GROUPS, NODES, kube_node
from tests.e2e.conftest import KEY, REPO_URI, Cluster, eventually
from tests.fakekube.fixtures import FakeKubeHandle
from tests.hub_origin import HubFixture

NODE = "gpu-a100-0"


@pytest.fixture
async def start_replica(fake_kube: FakeKubeHandle, tmp_path: Path) -> AsyncIterator[Start]:
    # A heartbeat timeout longer than the handover plus the agent's backoff: the node stays
    # Ready throughout, as with the defaults (10 s heartbeats, 30 s timeout, 15 s lease).
    async with replicas(fake_kube, tmp_path, heartbeat_timeout=6.0) as start:
        yield start


def _status(fake_kube: FakeKubeHandle, name: str) -> dict[str, Any]:
    status: dict[str, Any] = fake_kube.get(CACHES, name).get("status") or {}
    return status


async def test_the_agent_carries_on_with_the_new_leader_after_the_leader_is_killed(
    tmp_path: Path, hub: HubFixture, fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    fake_kube.create("nodes", kube_node(NODE, "a100"))
    fake_kube.create(GROUPS, node_group("a100", "10Gi"))
    a = await start_replica("coordinator-a")
    await eventually(lambda: a.leading, "the first replica leads", 5)
    b = await start_replica("coordinator-b")
    running: list[Replica] = [a, b]  # as Ready (a killed pod fails its probe)

    def selected() -> list[str]:
        return [r.api.url for r in running if r.name in labelled(fake_kube)]

    cluster = Cluster(hub, tmp_path / "nodes", fast_settings(tmp_path / "unused.db"))
    async with service(selected) as endpoint:
        try:
            await cluster.start_agent(
                NODE, None, coordinator=endpoint.url, kube=KubeAccess(api_url=fake_kube.url)
            )
            fake_kube.create(CACHES, cache("tiny", REPO_URI, "10Mi", "a100"))

            def pulled() -> bool:
                status = _status(fake_kube, "tiny")
                return cluster.holds_model(NODE) and status.get("nodeStatus") == {
                    NODE: "NodeDownloaded"
                }

            await eventually(pulled, "the agent pulls the model through the leader", 15)
            node_before = fake_kube.get(NODES, NODE)["status"]["modelStatus"]
            assert node_before == {"tiny": "ModelDownloaded"}

            running.remove(a)
            await a.kill()
            await eventually(lambda: b.leading, "the standby takes over", 5)
            await eventually(lambda: "coordinator-b" in labelled(fake_kube), "b labels its pod", 5)
            # The new leader starts from what the old one wrote: nothing regressed.
            assert _status(fake_kube, "tiny")["nodeStatus"] == {NODE: "NodeDownloaded"}
            assert _status(fake_kube, "tiny")["copies"] == {"total": 1, "available": 1, "failed": 0}
            assert fake_kube.get(NODES, NODE)["status"]["modelStatus"] == node_before

            metrics = b.api.coordinator.metrics.registry

            def heard() -> bool:
                return (metrics.get_sample_value("modelcache_coordinator_reports_total") or 0) > 0

            await eventually(heard, "the agent reports to the new leader", 10)
            fake_kube.delete(CACHES, "tiny")  # kubectl delete: the finalizer holds it
            assert CACHE_FINALIZER in fake_kube.get(CACHES, "tiny")["metadata"]["finalizers"]

            def released() -> bool:
                return not cluster.model_dir(NODE, KEY).exists() and not fake_kube.exists(
                    CACHES, "tiny"
                )

            await eventually(released, "files removed, then the finalizer released", 15)
            record = b.api.coordinator.registry.nodes[NODE]
            assert record.report is not None
            assert KEY not in record.report.models
            assert fake_kube.get(NODES, NODE)["status"]["modelStatus"] == {}
        finally:
            # The coordinators first (their long polls end), then the agent.
            for replica in running:
                await replica.stop()
            await cluster.stop_all()
