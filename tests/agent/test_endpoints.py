"""The agent's HTTP surface: metrics named as the issue lists them, probes, verify on request."""

from __future__ import annotations

import asyncio
import os
import re

from modelcache.agent.endpoints import AgentState
from tests.coordinator.conftest import cache, node_group
from tests.e2e.conftest import KEY, REPO_URI, Cluster, cluster, eventually

__all__ = ["cluster"]


async def _pulled(cluster: Cluster, **overrides: object) -> tuple[AgentState, str]:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100", **overrides)
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    state, url = cluster.agents["gpu-a100-0"]
    held = state.keeper.statuses
    await eventually(lambda: KEY in held and held[KEY].state == "ModelDownloaded", "pulled")
    return state, url


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_metrics_describe_the_cache(cluster: Cluster) -> None:
    state, url = await _pulled(cluster)
    await state.keeper.refresh_disk_metrics()
    async with cluster.api.http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    size = sum(p.stat().st_size for p in cluster.hub.source_dir.rglob("*") if p.is_file())
    assert _sample(text, 'modelcache_agent_models{state="ModelDownloaded"}') == 1
    assert _sample(text, 'modelcache_agent_models{state="ModelDownloading"}') == 0
    assert _sample(text, "modelcache_agent_downloaded_bytes_total") == size
    pulled = "modelcache_agent_pulled_bytes_total"
    assert _sample(text, f'{pulled}{{model="{KEY}",source="origin"}}') == size
    assert f'{pulled}{{model="{KEY}",source="peer"}}' not in text, "no peer in the group"
    assert _sample(text, "modelcache_agent_pull_duration_seconds_count") == 1
    assert _sample(text, f'modelcache_agent_model_progress_ratio{{storage_key="{KEY}"}}') == 1
    assert _sample(text, "modelcache_agent_cache_used_bytes") == size
    assert _sample(text, "modelcache_agent_disk_free_bytes") > 0
    assert _sample(text, "modelcache_agent_report_failures_total") == 0


async def test_probes_and_status(cluster: Cluster) -> None:
    _, url = await _pulled(cluster)
    http = cluster.api.http
    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["nodeGroup"] == "a100"
    async with http.get(f"{url}/v1/status") as response:
        body = await response.json()
    assert [m["state"] for m in body["models"]] == ["ModelDownloaded"]
    assert body["appliedGeneration"] >= 1


async def test_verify_on_request_rehashes_and_repairs(cluster: Cluster) -> None:
    _, url = await _pulled(cluster, rescan_interval=3600.0)
    http = cluster.api.http
    async with http.post(f"{url}/v1/verify") as response:
        assert (await response.json())["models"] == {KEY: "intact"}

    # Same size, same mtime: only a full re-hash can tell.
    weights = cluster.model_dir("gpu-a100-0") / "model-00001-of-00002.safetensors"
    stat = weights.stat()
    with weights.open("r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    async with http.post(f"{url}/v1/verify") as response:
        verdict = (await response.json())["models"][KEY]
    assert verdict.startswith("damaged")
    assert "model-00001-of-00002.safetensors" in verdict
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "re-pulled after verify")


async def test_progress_reports_are_throttled(cluster: Cluster) -> None:
    cluster.hub.origin.per_connection_rate = 512 * 1024
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100", heartbeat_interval=30.0, progress_interval=0.25)
    reports = cluster.api.coordinator.metrics.reports
    before = reports._value.get()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "pulled", 20)
    elapsed = loop.time() - started
    sent = reports._value.get() - before
    assert sent >= 3, "progress was reported while pulling"
    assert sent <= elapsed / 0.25 + 6, (sent, elapsed)
