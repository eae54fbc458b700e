"""Start and stop a whole agent: cache scan, keeper, coordinator link, HTTP endpoints.

Shutdown runs in phases with a deadline: stop taking new lists, stop pulls (each one's journal is
its checkpoint, so the next start resumes it), tell the coordinator the last state, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from modelcache.agent.endpoints import AgentState, build_app
from modelcache.agent.keeping import ModelKeeper
from modelcache.agent.layout import CacheLayout
from modelcache.agent.metrics import AgentMetrics
from modelcache.agent.peer_serving import PeerServer, UploadLimits
from modelcache.agent.settings import AgentSettings
from modelcache.agent.syncing import CoordinatorLink
from modelcache.contract.errors import ModelCacheError

log = logging.getLogger(__name__)
FINAL_REPORT_DEADLINE = 2.0


@contextlib.asynccontextmanager
async def running_agent(settings: AgentSettings) -> AsyncIterator[tuple[AgentState, str]]:
    """A working agent and the base URL of its endpoints; everything stops when the block ends."""
    layout = CacheLayout(settings.cache_root)
    await asyncio.to_thread(layout.prepare)
    metrics = AgentMetrics.create()
    keeper = ModelKeeper(settings, layout, metrics)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
    session = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "modelcache-agent"})
    link = CoordinatorLink(settings, session, keeper, layout, metrics)
    limits = UploadLimits(settings.peer_upload_slots, settings.peer_upload_bandwidth)
    peer_server = PeerServer(keeper.shelf, settings.node_name, limits, metrics)
    state = AgentState(keeper, link, metrics, settings.node_name, peer_server)
    runner = web.AppRunner(build_app(state), handle_signals=False, shutdown_timeout=1.0)
    tasks: list[asyncio.Task[None]] = []
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        port = runner.addresses[0][1]
        if settings.port == 0:  # a free port was picked: peers must learn which one
            link.address = replace(settings, port=port).advertised_url
        await keeper.start(await asyncio.to_thread(layout.load_desired))
        await keeper.refresh_disk_metrics()
        state.started = True

        def supervised(work: Coroutine[Any, Any, None], name: str) -> None:
            task = asyncio.create_task(work, name=name)
            task.add_done_callback(lambda _: state.stopped.set())
            tasks.append(task)

        supervised(link.follow_desired(), "agent-follow-desired")
        supervised(link.report_forever(), "agent-report")
        supervised(_maintain(keeper, settings), "agent-maintain")
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        yield state, f"http://{host}:{port}"
    finally:
        state.started = False
        for task in tasks:  # phase 1: no new lists, no new reports, no rescans
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await keeper.close()  # phase 2: pulls stop at their last journaled chunk, peers' polls end
        try:  # phase 3: the coordinator hears the last state
            async with asyncio.timeout(FINAL_REPORT_DEADLINE):
                await link.report_once()
        except (TimeoutError, ModelCacheError) as e:
            log.info("final status report skipped: %s", e)
        await runner.cleanup()
        peer_server.close()
        await session.close()


async def _maintain(keeper: ModelKeeper, settings: AgentSettings) -> None:
    """Retry errored models when due, and check published models against their manifests."""
    tick = min(settings.rescan_interval, 5.0)
    last_scan = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        keeper.reconcile()
        try:
            if time.monotonic() - last_scan >= settings.rescan_interval:
                last_scan = time.monotonic()
                await keeper.rescan()
            else:
                await keeper.refresh_disk_metrics()
        except OSError as e:  # a disk hiccup costs one scan, never the agent
            log.warning("checking the cache at %s failed: %s; trying again", settings.cache_root, e)


async def serve_until_cancelled(settings: AgentSettings) -> None:
    async with running_agent(settings) as (state, url):
        log.warning(
            "modelcache-agent %s serving on %s, cache %s, coordinator %s",
            settings.node_name,
            url,
            settings.cache_root,
            settings.coordinator,
        )
        await state.stopped.wait()
        raise ModelCacheError("a background task of the agent stopped; see the log above")
