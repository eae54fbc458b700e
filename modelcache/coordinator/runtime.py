"""Start and stop a whole coordinator: store, registry, reconcile loop and REST server.

Shutdown runs in phases with a deadline: stop taking requests, write the last statuses (a leader:
only while its Lease is surely its own), take the leader label off the pod, release the Lease,
close the store. Background tasks are named and watched: if one dies, the coordinator stops
instead of limping on without status writes or without its watch. With leader election a replica
stands by (listening and Ready, without the leader label the Service selects) until it holds the
Lease, then loads everything from the store, acts and labels its pod (see `leading.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from modelcache.contract.errors import ModelCacheError, UsageError
from modelcache.coordinator.admitting import Admission
from modelcache.coordinator.authenticating import open_gate
from modelcache.coordinator.leading import Leadership, LeadershipLostError, RoleLabel
from modelcache.coordinator.metrics import CoordinatorMetrics
from modelcache.coordinator.peer_tokens import PeerTokens, load_peer_key
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.rest import build_app
from modelcache.coordinator.service import Coordinator
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.stores.base import LeaseKeeper, PodLabeller, Store

log = logging.getLogger(__name__)
SHUTDOWN_DEADLINE = 5.0


def open_store(settings: CoordinatorSettings) -> Store:
    if settings.store.kind == "kube":
        from modelcache.coordinator.stores.kube import KubeStore  # only kube mode loads it

        return KubeStore(settings)
    from modelcache.coordinator.stores.sqlite_store import SqliteStore

    assert settings.store.sqlite_path is not None
    return SqliteStore(settings.store.sqlite_path)


@contextlib.asynccontextmanager
async def running_coordinator(
    settings: CoordinatorSettings, store: Store | None = None
) -> AsyncIterator[tuple[Coordinator, str]]:
    """A serving coordinator and its base URL; everything stops when the block ends.

    With leader election (`settings.election`) the block starts as a standby: listening (for
    probes), serving nothing else; it loads the objects and acts once it holds the Lease. Its
    one background task ends with `LeadershipLostError` when the Lease is lost. Whoever acts
    (the leader, or a coordinator alone) labels its pod for the Service once it serves."""
    store = store or open_store(settings)
    registry = Registry(
        heartbeat_timeout=settings.heartbeat_timeout,
        not_ready_deletion_timeout=settings.not_ready_deletion_timeout,
    )
    try:
        peer_key = await asyncio.to_thread(load_peer_key, settings.peer_key_file)
        coordinator = Coordinator(
            settings, store, registry, CoordinatorMetrics.create(), PeerTokens(peer_key)
        )
        coordinator.leadership = _leadership(settings, store)
        role = RoleLabel(
            store if isinstance(store, PodLabeller) else None,
            settings.pod_name,
            settings.store.namespace,
            retry_period=settings.election.retry_period if settings.election else 2.0,
        )
        gate = await open_gate(settings.auth, store, coordinator.metrics)
    except BaseException:
        await store.close()
        raise
    app = build_app(coordinator, gate)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    admission = Admission(settings, coordinator)  # webhooks over HTTPS, per-model node labels
    leadership = coordinator.leadership
    try:
        if leadership is None:
            await store.load(registry)
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        await admission.start()
        if leadership is None:
            tasks = [
                asyncio.create_task(coordinator.reconcile_forever(), name="coordinator-reconcile"),
                asyncio.create_task(store.follow(registry), name="coordinator-store-follow"),
            ]
            coordinator.background = tasks
            await coordinator.reconcile_once()
            coordinator.ready.set()
            coordinator.metrics.leading.set(1)
            await role.mark()
        else:
            lead = _lead_when_elected(coordinator, leadership, role)
            tasks = [asyncio.create_task(lead, name="coordinator-leading")]
            coordinator.background = tasks
        tasks.extend(admission.start_tasks())  # they wait for coordinator.ready
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
        yield coordinator, f"http://{host}:{port}"
    finally:
        coordinator.ready.clear()
        for record in registry.nodes.values():
            record.changed.set()  # long polls answer now instead of holding the shutdown
        await runner.cleanup()  # phase 1: no new requests
        await admission.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if leadership is None or leadership.leading:
            await _last_statuses(coordinator, leadership)  # phase 2
        await role.unmark()  # before the release: two pods never carry the label at once
        if leadership is not None:
            await leadership.release()  # after the last write: the next leader loads it
        coordinator.metrics.leading.set(0)
        await store.close()  # phase 3


def _leadership(settings: CoordinatorSettings, store: Store) -> Leadership | None:
    election = settings.election
    if election is None:
        return None
    if not isinstance(store, LeaseKeeper):
        raise UsageError(
            f"leader election needs a store that can hold a Lease (--store kube), not the "
            f"{store.name} store: turn it off with --no-leader-elect"
        )
    where = f"{settings.store.namespace}/{election.lease_name}"
    return Leadership(store, election, where)


async def _lead_when_elected(
    coordinator: Coordinator, leadership: Leadership, role: RoleLabel
) -> None:
    """Stand by until the Lease is ours; then load everything from the store, act and label the
    pod, renewing the Lease beside, until cancelled or the Lease is lost (`LeadershipLostError`,
    by which time `leadership.leading` is already False: nothing is written or served any more)."""
    await role.clear()  # a leader that exited restarts in the same pod, with the label
    await leadership.acquire()
    store, registry = coordinator.store, coordinator.registry
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(leadership.keep(), name="coordinator-lease")
            await store.load(registry)
            group.create_task(coordinator.reconcile_forever(), name="coordinator-reconcile")
            group.create_task(store.follow(registry), name="coordinator-store-follow")
            await coordinator.reconcile_once()
            coordinator.ready.set()
            coordinator.metrics.leading.set(1)
            log.warning(
                "serving as the leader (%d caches, %d nodes)",
                len(registry.caches),
                len(registry.nodes),
            )
            await role.mark()  # now the Service sends agents and users here
    except BaseExceptionGroup as failed:
        coordinator.ready.clear()  # what waits for it (admission) stops too
        coordinator.metrics.leading.set(0)
        lost = failed.subgroup(LeadershipLostError)
        raise (lost or failed).exceptions[0] from None


async def _last_statuses(coordinator: Coordinator, leadership: Leadership | None) -> None:
    """A leader writes only while its Lease is surely still its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_DEADLINE
    if leadership is not None:
        deadline = min(deadline, leadership.valid_until)
    try:
        async with asyncio.timeout_at(deadline):
            await coordinator.reconcile_once()
    except (TimeoutError, ModelCacheError) as e:
        log.warning("final status write skipped: %s", e)


async def serve_until_cancelled(settings: CoordinatorSettings) -> None:
    async with running_coordinator(settings) as (coordinator, url):
        election = settings.election
        log.warning(
            "modelcache-coordinator serving on %s (store: %s, agent auth: %s%s)",
            url,
            coordinator.store.name,
            settings.auth.mode,
            f", standby until it holds Lease {settings.store.namespace}/{election.lease_name} "
            f"as {election.identity}"
            if election
            else "",
        )
        done, _ = await asyncio.wait(coordinator.background, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise what killed it
            raise ModelCacheError(f"background task {task.get_name()} ended unexpectedly")
