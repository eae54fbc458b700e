"""The agent as a real process: killed mid-pull, stopped with SIGTERM, restarted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.coordinator.conftest import cache, node_group
from tests.e2e.conftest import KEY, REPO_URI, Cluster, eventually

_SERVING = re.compile(rb"serving on (http://\S+),")


@dataclass
class AgentProcess:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    async def status(self, http: aiohttp.ClientSession) -> dict[str, object]:
        async with http.get(f"{self.url}/v1/status") as response:
            return await response.json()  # type: ignore[no-any-return]

    async def metric(self, http: aiohttp.ClientSession, name: str) -> float:
        async with http.get(f"{self.url}/metrics") as response:
            text = await response.text()
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in /metrics"
        return float(match.group(1))


async def start_agent_process(cluster: Cluster, node: str, group: str) -> AgentProcess:
    log = cluster.root / f"{node}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_ENDPOINT": cluster.hub.url, "MODELCACHE_HEARTBEAT_INTERVAL": "0.2"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache.agent.main",
        "--coordinator",
        cluster.api.url,
        "--node-name",
        node,
        "--node-group",
        group,
        "--cache-root",
        str(cluster.root / node),
        "--listen",
        "127.0.0.1:0",
        "--min-free",
        "0",
        "--chunk-size",
        "256Ki",
        "--concurrency",
        "4",
        "--deletion-grace",
        "0.2",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    async with asyncio.timeout(15):
        while (match := _SERVING.search(seen)) is None:
            line = await process.stderr.readline()
            assert line, f"agent exited early: {seen.decode()}"
            seen += line
    drain = asyncio.create_task(_drain(process, log, seen), name=f"drain-{node}")
    _DRAINS.add(drain)
    drain.add_done_callback(_DRAINS.discard)
    return AgentProcess(process, match.group(1).decode(), log)


_DRAINS: set[asyncio.Task[None]] = set()


async def _drain(process: asyncio.subprocess.Process, log: Path, head: bytes) -> None:
    """Keep reading the agent's stderr so it never blocks on a full pipe; keep it for failures."""
    assert process.stderr is not None
    with log.open("ab") as out:
        out.write(head)
        while line := await process.stderr.readline():
            out.write(line)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _stop(agent: AgentProcess) -> int:
    if agent.process.returncode is None:
        agent.process.kill()
    code = await agent.process.wait()
    await asyncio.gather(*_DRAINS)
    return code


async def _pulling(cluster: Cluster, http: aiohttp.ClientSession) -> AgentProcess:
    """An a100 agent process half-way through a slow pull of the tiny model."""
    await cluster.api.put(node_group("a100", "10Gi"))
    cluster.hub.origin.per_connection_rate = 256 * 1024  # ~5 s for the 5.5 MB model
    agent = await start_agent_process(cluster, "gpu-a100-0", "a100")
    await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))

    async def some_bytes() -> bool:
        models = (await agent.status(http))["models"]
        assert isinstance(models, list)
        return bool(models) and models[0]["bytesDone"] > 1 << 20

    await eventually(some_bytes, "a megabyte pulled", 15)
    return agent


async def test_killed_mid_pull_then_restarted_resumes_and_verifies(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    agent = await _pulling(cluster, http)
    agent.process.send_signal(signal.SIGKILL)
    assert await _stop(agent) == -signal.SIGKILL
    assert not cluster.model_dir("gpu-a100-0").exists(), "a partial pull is never published"
    staging = cluster.root / "gpu-a100-0" / "models" / f".{KEY}.partial"
    assert staging.is_dir()

    cluster.hub.origin.per_connection_rate = None
    restarted = await start_agent_process(cluster, "gpu-a100-0", "a100")
    try:

        async def downloaded() -> bool:
            return await cluster.node_states("tiny") == {"gpu-a100-0": "NodeDownloaded"}

        await eventually(downloaded, "the restarted agent finished the pull", 20)
        assert cluster.holds_model("gpu-a100-0")
        assert not staging.exists()
        total = sum(p.stat().st_size for p in cluster.hub.source_dir.rglob("*") if p.is_file())
        fetched = await restarted.metric(http, "modelcache_agent_downloaded_bytes_total")
        assert 0 < fetched <= total - (1 << 20), "it resumed instead of starting over"
    finally:
        await _stop(restarted)


async def test_sigterm_mid_pull_exits_quickly_and_the_next_start_resumes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    agent = await _pulling(cluster, http)
    started = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        code = await agent.process.wait()
    await asyncio.gather(*_DRAINS)
    assert code == 0, agent.log.read_text()
    assert time.monotonic() - started < 5, "SIGTERM must stop the agent within a few seconds"
    assert not cluster.model_dir("gpu-a100-0").exists()

    cluster.hub.origin.per_connection_rate = None
    restarted = await start_agent_process(cluster, "gpu-a100-0", "a100")
    try:
        await eventually(lambda: cluster.holds_model("gpu-a100-0"), "resumed and published", 20)
        total = sum(p.stat().st_size for p in cluster.hub.source_dir.rglob("*") if p.is_file())
        fetched = await restarted.metric(http, "modelcache_agent_downloaded_bytes_total")
        assert fetched <= total - (1 << 20), "the checkpoint kept what was pulled"
    finally:
        await _stop(restarted)
