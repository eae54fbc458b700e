"""The agent against a real coordinator and origin: what it pulls, refuses, retries, deletes."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from modelcache.agent.endpoints import AgentState
from modelcache.contract.storage_keys import storage_key
from modelcache.origin.repos import load_repo
from modelcache.origin.synthetic import write_synthetic_repo
from tests.coordinator.conftest import cache, node_group
from tests.e2e.conftest import KEY, REPO_URI, Cluster, cluster, eventually
from tests.hub_origin import FAST

__all__ = ["cluster"]  # the fixture, shared with the end-to-end tests
OTHER_URI = "hf://acme/other-model"
MiB = 1 << 20


def _state(agent: AgentState, key: str = KEY) -> tuple[str, str, str]:
    status = agent.keeper.statuses.get(key)
    return (status.state, status.reason, status.message) if status else ("absent", "", "")


def _serve_other_model(cluster: Cluster, tmp_path: Path) -> None:
    folder = tmp_path / "other-repo"
    write_synthetic_repo(folder, {"weights.safetensors": 3 * MiB, "config.json": 300}, seed=3)
    cluster.hub.origin.add_repo(load_repo("acme/other-model", folder))


async def test_two_caches_of_one_uri_share_one_copy(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("first", REPO_URI, "10Mi", "a100"))
    await cluster.api.put(cache("second", REPO_URI, "10Mi", "a100"))

    async def both() -> bool:
        states = [await cluster.node_states(name) for name in ("first", "second")]
        return all(s == {"gpu-a100-0": "NodeDownloaded"} for s in states)

    await eventually(both, "both caches served by the node")
    models = cluster.root / "gpu-a100-0" / "models"
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == [KEY]
    sent = cluster.hub.data_bytes_sent()
    assert sent == sum(p.stat().st_size for p in cluster.hub.source_dir.rglob("*") if p.is_file())


async def test_a_model_the_disk_cannot_hold_is_refused_with_numbers(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Pi"))
    agent = await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("huge", REPO_URI, "5Pi", "a100"))

    await eventually(lambda: _state(agent)[0] == "ModelDownloadError", "refused")
    _, reason, message = _state(agent)
    assert reason == "InsufficientDisk"
    assert "5 PiB" in message or "5.0 PiB" in message, message
    assert "available" in message
    assert "free space" in message
    assert cluster.hub.data_bytes_sent() == 0, "no byte moved"
    assert not cluster.model_dir("gpu-a100-0").exists()

    async def reported() -> bool:
        return await cluster.node_states("huge") == {"gpu-a100-0": "NodeDownloadError"}

    await eventually(reported, "the coordinator shows the error")


async def test_at_most_n_pulls_run_and_the_rest_wait_pending(
    cluster: Cluster, tmp_path: Path
) -> None:
    _serve_other_model(cluster, tmp_path)
    cluster.hub.origin.per_connection_rate = 512 * 1024
    await cluster.api.put(node_group("a100", "10Gi"))
    agent = await cluster.start_agent("gpu-a100-0", "a100", max_parallel_pulls=1)
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await cluster.api.put(cache("other", OTHER_URI, "10Mi", "a100"))
    other = storage_key(OTHER_URI)

    def one_waits() -> bool:
        states = sorted([_state(agent)[0], _state(agent, other)[0]])
        return states == ["ModelDownloadPending", "ModelDownloading"]

    await eventually(one_waits, "one pull running, one pending")
    cluster.hub.origin.per_connection_rate = None
    await eventually(
        lambda: _state(agent)[0] == _state(agent, other)[0] == "ModelDownloaded", "both pulled"
    )


async def test_the_bandwidth_cap_covers_all_pulls_of_the_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    _serve_other_model(cluster, tmp_path)
    await cluster.api.put(node_group("a100", "10Gi"))
    agent = await cluster.start_agent(
        "gpu-a100-0", "a100", max_parallel_pulls=2, max_bandwidth=4 * MiB
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await cluster.api.put(cache("other", OTHER_URI, "10Mi", "a100"))
    await eventually(
        lambda: _state(agent)[0] == _state(agent, storage_key(OTHER_URI))[0] == "ModelDownloaded",
        "both pulled",
        30,
    )
    elapsed = loop.time() - started
    moved = cluster.hub.data_bytes_sent()
    # Two models of 5.5 and 3 MiB under one 4 MiB/s cap (one second of burst) take >= 1 s;
    # two separate caps would let them finish in about half that.
    assert moved > 8 * MiB
    assert elapsed >= (moved - 4 * MiB) / (4 * MiB) * 0.9, (elapsed, moved)


async def test_temporary_failures_are_retried_and_visible(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    rule = cluster.hub.origin.faults.status(503, count=None, path="model-00001")
    agent = await cluster.start_agent(
        "gpu-a100-0", "a100", pull=replace(FAST, min_free_bytes=0, attempts_per_chunk=1)
    )
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))

    await eventually(lambda: _state(agent)[1] == "Retrying", "a retry shown in status")
    state, _, message = _state(agent)
    assert state == "ModelDownloading"
    assert "503" in message
    assert "attempt" in message
    assert rule.hits >= 1
    cluster.hub.origin.faults.clear()
    await eventually(
        lambda: _state(agent) == ("ModelDownloaded", "", ""), "it succeeded once the source healed"
    )
    assert cluster.holds_model("gpu-a100-0")


async def test_permanent_errors_stay_until_the_retry_interval(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    agent = await cluster.start_agent("gpu-a100-0", "a100", error_retry_interval=1.0)
    await cluster.api.put(cache("other", OTHER_URI, "10Mi", "a100"))
    other = storage_key(OTHER_URI)

    await eventually(lambda: _state(agent, other)[0] == "ModelDownloadError", "404 reported")
    assert _state(agent, other)[1] == "SourceNotFound"
    assert "acme/other-model" in _state(agent, other)[2]
    _serve_other_model(cluster, tmp_path)  # the repo appears: tried again after the interval
    await eventually(lambda: _state(agent, other)[0] == "ModelDownloaded", "retried", 10)


async def test_a_saved_list_is_kept_while_the_coordinator_is_down(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "pulled")
    await cluster.stop_agent("gpu-a100-0")
    models = cluster.root / "gpu-a100-0" / "models"
    (models / "stray-folder").mkdir()
    (models / ".0123456789abcdef.partial" / "files").mkdir(parents=True)
    await cluster.stop_coordinator()

    # Restart with the coordinator down: the model is reported held, nothing is deleted.
    agent = await cluster.start_agent("gpu-a100-0", "a100", coordinator="http://127.0.0.1:9")
    assert _state(agent)[0] == "ModelDownloaded"
    await asyncio.sleep(0.6)  # three deletion graces
    assert (models / "stray-folder").is_dir()
    assert cluster.holds_model("gpu-a100-0")
    assert (models / ".0123456789abcdef.partial").is_dir()
    assert agent.metrics.report_failures._value.get() > 0
    await cluster.stop_agent("gpu-a100-0")

    # With the coordinator's list, what no model owns goes (after the grace period).
    await cluster.start_coordinator()
    await cluster.start_agent("gpu-a100-0", "a100")
    await eventually(
        lambda: (
            sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock"))
            == sorted([KEY, f".{KEY}.manifest.json"])
        ),
        "strays removed, the model kept",
    )
    assert cluster.holds_model("gpu-a100-0")


async def test_files_damaged_behind_its_back_are_pulled_again(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    agent = await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "pulled")
    folder = cluster.model_dir("gpu-a100-0")

    # Truncated while running: the periodic rescan sees the size.
    weights = folder / "model-00002-of-00002.safetensors"
    with weights.open("r+b") as f:
        f.truncate(1000)
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "truncation repaired", 10)

    # Edited in place, same size, while the agent is down: seen at start by its mtime.
    await cluster.stop_agent("gpu-a100-0")
    config = folder / "config.json"
    data = bytearray(config.read_bytes())
    data[0] ^= 0xFF
    config.write_bytes(bytes(data))
    future = os.stat(config).st_mtime + 5
    os.utime(config, (future, future))
    agent = await cluster.start_agent("gpu-a100-0", "a100")
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "edit repaired", 10)
    await eventually(lambda: _state(agent)[0] == "ModelDownloaded", "reported again")


async def test_restart_reports_held_models_at_once_without_fetching(cluster: Cluster) -> None:
    await cluster.api.put(node_group("a100", "10Gi"))
    await cluster.start_agent("gpu-a100-0", "a100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
    await eventually(lambda: cluster.holds_model("gpu-a100-0"), "pulled")
    await cluster.stop_agent("gpu-a100-0")
    sent = cluster.hub.data_bytes_sent()

    agent = await cluster.start_agent("gpu-a100-0", "a100", verify_on_start=True)
    assert _state(agent)[0] == "ModelDownloaded", "known before any request"
    await asyncio.sleep(0.3)
    assert cluster.hub.data_bytes_sent() == sent
