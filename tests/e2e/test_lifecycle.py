"""The issue's end-to-end scenarios on the embedded store: caches placed, grown, shrunk, refused,
deleted, and a coordinator that goes away mid-pull."""

from __future__ import annotations

from tests.coordinator.conftest import cache, node_group
from tests.e2e.conftest import REPO_URI, Cluster, eventually


async def _three_nodes(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.api.put(node_group("h100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.start_agent("gpu-a100-1", "a100")
    await cluster.start_agent("gpu-h100-0", "h100")


async def test_a_cache_on_one_group_lands_only_on_its_nodes(cluster: Cluster) -> None:
    await _three_nodes(cluster)
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))

    async def downloaded() -> bool:
        states = await cluster.node_states("tiny")
        return states == {"gpu-a100-0": "NodeDownloaded", "gpu-a100-1": "NodeDownloaded"}

    await eventually(downloaded, "both a100 nodes report NodeDownloaded")
    assert cluster.holds_model("gpu-a100-0")
    assert cluster.holds_model("gpu-a100-1")
    assert not cluster.model_dir("gpu-h100-0").exists()
    assert list((cluster.root / "gpu-h100-0" / "models").iterdir()) == []
    status = (await cluster.cache("tiny"))["status"]
    assert status["copies"] == {"available": 2, "total": 2, "failed": 0}
    node = await cluster.api.call("GET", "/v1/localmodelnodes/gpu-a100-0")
    assert node["status"]["modelStatus"] == {"tiny": "ModelDownloaded"}


async def test_groups_added_and_removed_then_the_cache_deleted(cluster: Cluster) -> None:
    await _three_nodes(cluster)
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(lambda: cluster.holds_model("gpu-a100-1"), "a100 nodes pulled the model")

    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100", "h100"))

    async def all_three() -> bool:
        states = await cluster.node_states("tiny")
        return len(states) == 3 and set(states.values()) == {"NodeDownloaded"}

    await eventually(all_three, "the h100 node pulled it too")
    assert cluster.holds_model("gpu-h100-0")

    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "h100"))

    async def only_h100() -> bool:
        return await cluster.node_states("tiny") == {"gpu-h100-0": "NodeDownloaded"}

    await eventually(only_h100, "a100 entries pruned from the status")
    await eventually(
        lambda: (
            not cluster.model_dir("gpu-a100-0").exists()
            and not cluster.model_dir("gpu-a100-1").exists()
        ),
        "a100 files deleted",
    )
    assert cluster.holds_model("gpu-h100-0")

    await cluster.api.call("DELETE", "/v1/localmodelcaches/tiny", expect=202)
    await eventually(lambda: not cluster.model_dir("gpu-h100-0").exists(), "h100 files deleted")

    async def object_gone() -> bool:
        async with cluster.api.http.get(f"{cluster.api.url}/v1/localmodelcaches/tiny") as r:
            return r.status == 404

    await eventually(object_gone, "the cache object removed once no node holds the files")
    for node in ("gpu-a100-0", "gpu-a100-1", "gpu-h100-0"):
        assert list((cluster.root / node / "models").iterdir()) == [], node


async def test_a_model_larger_than_the_storage_limit_is_refused_without_moving_bytes(
    cluster: Cluster,
) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.api.put(node_group("h100", "4Mi"))
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.start_agent("gpu-h100-0", "h100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100", "h100"))

    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "a100 holds the model")
    status = (await cluster.cache("tiny"))["status"]
    refused = {c["type"]: c for c in status["conditions"]}["Admitted-h100"]
    assert refused["status"] == "False"
    assert refused["reason"] == "ExceedsStorageLimit"
    assert "4Mi" in refused["message"]
    assert "10Mi" in refused["message"]
    assert "gpu-h100-0" not in status.get("nodeStatus", {})
    assert list((cluster.root / "gpu-h100-0" / "models").iterdir()) == []


async def test_the_pull_finishes_while_the_coordinator_is_away(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    cluster.hub.origin.per_connection_rate = 1 << 20  # ~1.5 s for the model over 4 connections
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))

    async def downloading() -> bool:
        return await cluster.node_states("tiny") == {"gpu-a100-0": "NodeDownloading"}

    await eventually(downloading, "the pull started")
    await cluster.stop_coordinator()
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "the pull finished alone", 20)
    state, _ = cluster.agents["gpu-a100-0"]
    await eventually(
        lambda: [r.state for r in state.keeper.reports()] == ["ModelDownloaded"], "held"
    )

    await cluster.start_coordinator()

    async def reported() -> bool:
        return await cluster.node_states("tiny") == {"gpu-a100-0": "NodeDownloaded"}

    await eventually(reported, "status right soon after the coordinator returned", 10)
    assert state.metrics.report_failures._value.get() > 0  # it did notice the outage
