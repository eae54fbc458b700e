"""Start and stop a whole coordinator: store, registry, reconcile loop and REST server.

Shutdown runs in phases with a deadline: stop taking requests, write the last statuses, close the
store. Background tasks are named and watched: if one dies, the coordinator stops instead of
limping on without status writes or without its watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from modelcache.contract.errors import ModelCacheError
from modelcache.coordinator.authenticating import open_gate
from modelcache.coordinator.metrics import CoordinatorMetrics
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.rest import build_app
from modelcache.coordinator.service import Coordinator
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.stores.base import Store

log = logging.getLogger(__name__)
SHUTDOWN_DEADLINE = 5.0


def open_store(settings: CoordinatorSettings) -> Store:
    if settings.store.kind == "kube":
        from modelcache.coordinator.stores.kube_store import KubeStore  # only kube mode loads it

        return KubeStore(settings)
    from modelcache.coordinator.stores.sqlite_store import SqliteStore

    assert settings.store.sqlite_path is not None
    return SqliteStore(settings.store.sqlite_path)


@contextlib.asynccontextmanager
async def running_coordinator(
    settings: CoordinatorSettings, store: Store | None = None
) -> AsyncIterator[tuple[Coordinator, str]]:
    """A serving coordinator and its base URL; everything stops when the block ends."""
    store = store or open_store(settings)
    registry = Registry(
        heartbeat_timeout=settings.heartbeat_timeout,
        not_ready_deletion_timeout=settings.not_ready_deletion_timeout,
    )
    coordinator = Coordinator(settings, store, registry, CoordinatorMetrics.create())
    try:
        gate = await open_gate(settings.auth, store, coordinator.metrics)
    except BaseException:
        await store.close()
        raise
    app = build_app(coordinator, gate)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        await store.load(registry)
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        tasks = [
            asyncio.create_task(coordinator.reconcile_forever(), name="coordinator-reconcile"),
            asyncio.create_task(store.follow(registry), name="coordinator-store-follow"),
        ]
        coordinator.background = tasks
        await coordinator.reconcile_once()
        coordinator.ready.set()
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        yield coordinator, f"http://{host}:{port}"
    finally:
        coordinator.ready.clear()
        for record in registry.nodes.values():
            record.changed.set()  # long polls answer now instead of holding the shutdown
        await runner.cleanup()  # phase 1: no new requests
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:  # phase 2: the last statuses
            async with asyncio.timeout(SHUTDOWN_DEADLINE):
                await coordinator.reconcile_once()
        except (TimeoutError, ModelCacheError) as e:
            log.warning("final status write skipped: %s", e)
        await store.close()  # phase 3


async def serve_until_cancelled(settings: CoordinatorSettings) -> None:
    async with running_coordinator(settings) as (coordinator, url):
        log.warning(
            "modelcache-coordinator serving on %s (store: %s, agent auth: %s)",
            url,
            coordinator.store.name,
            settings.auth.mode,
        )
        done, _ = await asyncio.wait(coordinator.background, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise what killed it
            raise ModelCacheError(f"background task {task.get_name()} ended unexpectedly")
