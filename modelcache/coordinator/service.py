"""The coordinator's operations, and the loop that writes statuses and finishes deletions.

REST handlers call these methods; the store persists; the registry decides. The reconcile loop
ticks every `status_interval`: it notices missed heartbeats, tells nodes of their peers' changes
(one new desired list per node per tick at most), drops finalizers of deleted caches whose files
are gone everywhere, and writes each changed status once (coalescing bursts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from modelcache.contract.agent_wire import Registration, StatusReport
from modelcache.contract.errors import TemporaryError
from modelcache.contract.objects import (
    FieldError,
    JsonObject,
    normalize_cache,
    normalize_node_group,
)
from modelcache.coordinator.leading import Leadership, LeadershipLostError
from modelcache.coordinator.metrics import CoordinatorMetrics
from modelcache.coordinator.nodes import NodeRecord
from modelcache.coordinator.peer_tokens import PeerTokens
from modelcache.coordinator.registry import Dirty, Registry
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.stores.base import (
    ObjectNotFoundError,
    StatusBatch,
    StatusJson,
    Store,
)

log = logging.getLogger(__name__)
SLICE_SECONDS = 0.005  # longest stretch of status rendering between two chances for requests
CATCH_UP_NODES = 128  # aggregate entries brought up to date between two looks at the clock


class Pauser:
    """Lets requests in during a long synchronous stretch: at 10,000 nodes a reconcile tick has
    thousands of objects to render, and one unbroken slice of that would stall every request."""

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self.slice_seconds = slice_seconds
        self._since = time.perf_counter()

    async def now_and_then(self) -> None:
        if time.perf_counter() - self._since >= self.slice_seconds:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        store: Store,
        registry: Registry,
        metrics: CoordinatorMetrics,
        peer_tokens: PeerTokens,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.peer_tokens = peer_tokens
        self.ready = asyncio.Event()
        self._written: dict[tuple[str, str], Any] = {}  # (kind, name) -> last status written
        self._releasing: set[str] = set()
        self._dirty_since: float | None = None
        self.background: list[asyncio.Task[None]] = []  # supervised by the runtime
        self.leadership: Leadership | None = None
        """The election this replica takes part in; None when it acts alone."""

    @property
    def standby(self) -> str | None:
        """Why this replica must not serve agents and users now, or None when it may."""
        leadership = self.leadership
        if leadership is None:
            return None
        if not leadership.leading:
            holder = f"{leadership.holder} holds it" if leadership.holder else "nobody holds it"
            return (
                f"this coordinator replica ({leadership.identity}) is on standby: it does not "
                f"hold Lease {leadership.where} ({holder}); the Service sends requests to the "
                "leader, retry"
            )
        if not self.ready.is_set():
            return "this coordinator replica has just become the leader and is loading; retry"
        return None

    def _may_write(self) -> None:
        """A replica that lost the Lease writes nothing more, whatever was under way."""
        leadership = self.leadership
        if leadership is not None and not leadership.leading:
            raise LeadershipLostError(
                f"not writing: this replica no longer holds Lease {leadership.where}"
            )

    # --- objects (REST PUT/DELETE) --------------------------------------------------------------

    async def apply_cache(self, name: str, raw: Mapping[str, Any]) -> JsonObject:
        normalized = normalize_cache(_named(raw, name))
        current = self.registry.caches.get(name)
        if current is not None and current.source_model_uri != normalized["spec"]["sourceModelUri"]:
            raise FieldError(
                "spec.sourceModelUri",
                f"is immutable (it is {current.source_model_uri!r}): create a new cache instead",
            )
        self._may_write()
        stored = await self.store.put_cache(normalized)
        self.registry.upsert_cache(stored)
        return self.registry.cache_with_status(name)

    async def delete_cache(self, name: str) -> None:
        if name not in self.registry.caches:
            raise ObjectNotFoundError(f"LocalModelCache {name} does not exist")
        self._may_write()
        marked = await self.store.delete_cache(name)
        if marked is None:
            self.registry.remove_cache(name)
        else:
            self.registry.upsert_cache(marked)

    async def apply_group(self, name: str, raw: Mapping[str, Any]) -> JsonObject:
        normalized = normalize_node_group(_named(raw, name))
        self._may_write()
        stored = await self.store.put_group(normalized)
        self.registry.upsert_group(stored)
        return self.registry.group_with_status(name)

    async def delete_group(self, name: str) -> None:
        if name not in self.registry.groups:
            raise ObjectNotFoundError(f"LocalModelNodeGroup {name} does not exist")
        self._may_write()
        await self.store.delete_group(name)
        self.registry.remove_group(name)

    # --- agents ---------------------------------------------------------------------------------

    def register(self, node: str, registration: Registration) -> NodeRecord:
        record = self.registry.register(node, registration)
        self._note_dirty()
        return record

    def report(self, node: str, report: StatusReport, applied_generation: int) -> None:
        if node not in self.registry.nodes or self.registry.nodes[node].registration is None:
            raise ObjectNotFoundError(
                f"node {node} has not registered: POST its registration first"
            )
        self.registry.report(node, report, applied_generation)
        self.metrics.reports.inc()
        self._note_dirty()

    def forget_node(self, node: str) -> None:
        if node not in self.registry.nodes:
            raise ObjectNotFoundError(f"node {node} is not known")
        self.registry.forget_node(node)
        self._note_dirty()

    def _note_dirty(self) -> None:
        if self._dirty_since is None and self.registry.dirty:
            self._dirty_since = time.monotonic()

    # --- the reconcile loop ---------------------------------------------------------------------

    async def reconcile_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.reconcile_once()
            except TemporaryError as e:
                log.warning("status write failed, retrying next tick: %s", e)
                self.metrics.write_failures.inc()
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(self.settings.status_interval - elapsed, 0.01))

    async def reconcile_once(self) -> None:
        registry = self.registry
        registry.sweep_readiness()
        registry.publish_peers()
        await self._finish_deletions()
        dirty = registry.dirty.take()
        dirty_since, self._dirty_since = self._dirty_since, None
        batch = StatusBatch()
        try:
            await self._stage_and_write(dirty, batch)
        except BaseException:  # a failed write, or cancelled mid-tick: all of it is still to do
            _restore(registry, dirty, self._written, batch)
            raise
        if dirty_since is not None:
            self.metrics.aggregation_lag.set(time.monotonic() - dirty_since)
        self.metrics.objects.labels("LocalModelCache").set(len(registry.caches))
        self.metrics.objects.labels("LocalModelNodeGroup").set(len(registry.groups))
        self.metrics.objects.labels("LocalModelNode").set(len(registry.nodes))

    async def _stage_and_write(self, dirty: Dirty, batch: StatusBatch) -> None:
        registry, store, pause = self.registry, self.store, Pauser()
        # Requests run in between (the pauses), so every name is looked up again: it may be gone.
        for name in dirty.caches:
            while name in registry.caches and not registry.catch_up(name, CATCH_UP_NODES):
                await pause.now_and_then()
            if name in registry.caches:
                status = registry.rendering(name, 0.0).status
                if self._written.get(("cache", name)) != status:  # bytes: a memcmp
                    self._written[("cache", name)] = status
                    batch.caches[name] = StatusJson(status)
            await pause.now_and_then()
        for name in dirty.groups & registry.groups.keys():
            self._stage(batch.groups, "group", name, registry.group_with_status(name)["status"])
        for name in dirty.nodes:
            if name not in registry.nodes:
                continue
            if store.keeps_node_objects:
                self._stage(batch.nodes, "node", name, registry.node_object(name))
            if store.keeps_agent_records:
                self._stage(batch.agents, "agent", name, registry.nodes[name].as_raw())
            await pause.now_and_then()
        batch.removed_nodes = dirty.removed_nodes - registry.nodes.keys()
        for name in batch.removed_nodes:
            self._written.pop(("node", name), None)
            self._written.pop(("agent", name), None)
        if batch:
            self._may_write()
            await store.write(batch)

    def _stage(self, into: dict[str, JsonObject], kind: str, name: str, value: JsonObject) -> None:
        comparable = _without_times(value)
        if self._written.get((kind, name)) != comparable:
            self._written[(kind, name)] = comparable
            into[name] = value

    async def _finish_deletions(self) -> None:
        for cache in list(self.registry.caches.values()):
            if not cache.deleting or cache.name in self._releasing:
                continue
            progress = self.registry.deletion_progress(cache)
            if not progress.done:
                continue
            if progress.given_up_on:
                log.warning(
                    "cache %s deleted without confirmation from NotReady nodes %s",
                    cache.name,
                    ", ".join(progress.given_up_on),
                )
            self._may_write()
            self._releasing.add(cache.name)
            try:
                await self.store.release_cache(cache.name)
            finally:
                self._releasing.discard(cache.name)
            self.registry.remove_cache(cache.name)
            self._written.pop(("cache", cache.name), None)


def _named(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise FieldError("body", "must be a JSON or YAML object")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise FieldError("metadata", "must be an object")
    given = metadata.get("name")
    if given is not None and given != name:
        raise FieldError("metadata.name", f"{given!r} differs from the name in the URL ({name!r})")
    return {**raw, "metadata": {**metadata, "name": name}}


def _without_times(value: JsonObject) -> Any:
    """Heartbeats alone (a new lastReportTime) are not worth a write."""
    if value.get("kind") == "LocalModelNode":
        status = {k: v for k, v in value.get("status", {}).items() if k != "lastReportTime"}
        return {**value, "status": status}
    return value


def _restore(
    registry: Registry, dirty: Dirty, written: dict[tuple[str, str], Any], batch: StatusBatch
) -> None:
    """A failed write must be retried: put the work back and forget what we thought we wrote."""
    registry.dirty.caches |= dirty.caches
    registry.dirty.groups |= dirty.groups
    registry.dirty.nodes |= dirty.nodes
    registry.dirty.removed_nodes |= dirty.removed_nodes
    staged = (
        ("cache", batch.caches),
        ("group", batch.groups),
        ("node", batch.nodes),
        ("agent", batch.agents),
    )
    for kind, names in staged:
        for name in names:
            written.pop((kind, name), None)
