"""The agent's two conversations with the coordinator, each one long-lived task.

- `follow_desired`: register, then long-poll the node's desired list; every new list is saved
  under the cache root and handed to the keeper.
- `report_forever`: the full status on every state change, progress at most every
  `progress_interval`, and a heartbeat when nothing changes. A report that fails is not queued:
  the next one carries the latest state, whenever the coordinator is back.

Neither ever gives up: an unreachable coordinator costs reports, never pulls.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import psutil

from modelcache.agent.coordinator_client import (
    CoordinatorClient,
    CoordinatorRefusedError,
    NotRegisteredError,
    TokenFile,
)
from modelcache.agent.keeping import ModelKeeper
from modelcache.agent.layout import CacheLayout
from modelcache.agent.metrics import AgentMetrics
from modelcache.agent.node_identity import read_node_group
from modelcache.agent.settings import AgentSettings
from modelcache.contract.agent_wire import Disk, RawStatusReport, model_report_to_raw
from modelcache.contract.errors import ModelCacheError, TemporaryError

log = logging.getLogger(__name__)
_MAX_BACKOFF = 30.0


class CoordinatorLink:
    def __init__(
        self,
        settings: AgentSettings,
        session: aiohttp.ClientSession,
        keeper: ModelKeeper,
        layout: CacheLayout,
        metrics: AgentMetrics,
    ) -> None:
        self._settings = settings
        self._session = session
        self._client = CoordinatorClient(
            session, settings.coordinator, settings.node_name, TokenFile(settings.token_file)
        )
        self._keeper = keeper
        self._layout = layout
        self._metrics = metrics
        self.registered = asyncio.Event()
        self.node_group: str | None = settings.node_group
        self.heartbeat = settings.heartbeat_interval or 10.0
        self._registered_group: str | None = None
        self.address = settings.advertised_url
        """Registered as this node's agent URL: where its peers fetch chunks."""

    async def follow_desired(self) -> None:
        generation = -1  # unknown: the first poll answers at once
        failures = 0
        while True:
            try:
                if not self.registered.is_set():
                    await self._register()
                    generation = -1
                desired = await self._client.desired(generation, self._settings.long_poll_seconds)
                failures = 0
                if await self._group_changed():
                    self.registered.clear()  # register again with the new label
                    continue
                if desired.generation != generation:
                    generation = desired.generation
                    await asyncio.to_thread(self._layout.save_desired, desired)
                    log.info("desired list %d: %d model(s)", generation, len(desired.models))
                    self._keeper.apply(desired)
            except NotRegisteredError:
                self.registered.clear()
            except ModelCacheError as e:
                failures += 1
                self._metrics.report_failures.inc()
                generation = -1  # the coordinator may have restarted: ask for its list at once
                delay = _backoff(failures)
                level = logging.ERROR if isinstance(e, CoordinatorRefusedError) else logging.WARNING
                log.log(level, "desired list: %s (next try in %.0fs)", e, delay)
                await asyncio.sleep(delay)

    async def report_forever(self) -> None:
        keeper = self._keeper
        failures = 0
        last_sent = 0.0
        while True:
            await self.registered.wait()
            timeout = self.heartbeat if failures == 0 else _backoff(failures)
            try:
                async with asyncio.timeout(timeout):
                    await keeper.changed.wait()
            except TimeoutError:
                pass
            if not keeper.urgent:  # progress only: throttle
                wait = last_sent + self._settings.progress_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            keeper.changed.clear()
            keeper.urgent = False
            last_sent = time.monotonic()
            try:
                await self.report_once()
                failures = 0
            except NotRegisteredError:
                self.registered.clear()
                failures += 1
            except ModelCacheError as e:
                failures += 1
                self._metrics.report_failures.inc()
                level = logging.ERROR if isinstance(e, CoordinatorRefusedError) else logging.WARNING
                log.log(level, "status report: %s", e)

    async def report_once(self) -> None:
        """Send the full state now (also the last word at shutdown)."""
        if not self.registered.is_set():
            raise TemporaryError("not registered yet")
        disk = await self._disk()
        body: RawStatusReport = {
            "disk": {"capacityBytes": disk.capacity_bytes, "freeBytes": disk.free_bytes},
            "models": [model_report_to_raw(r) for r in self._keeper.reports()],
        }
        await self._client.report(self._keeper.applied_generation, body)

    async def _labelled_group(self) -> str | None:
        """The group an explicit --node-group names, else the Node's label (in Kubernetes)."""
        kube = self._settings.kube
        if self._settings.node_group is not None or kube is None:
            return self._settings.node_group
        return await read_node_group(
            self._session, kube, self._settings.node_name, self._settings.node_group_label
        )

    async def _group_changed(self) -> bool:
        """A relabelled Node moves the agent to its new group (checked once per long poll)."""
        if self._settings.node_group is not None or self._settings.kube is None:
            return False
        group = await self._labelled_group()
        if group == self._registered_group:
            return False
        log.warning("node group label changed: %s -> %s", self._registered_group, group)
        return True

    async def _register(self) -> None:
        group = await self._labelled_group()
        disk = await self._disk()
        answer = await self._client.register(group, self.address, disk)
        self._registered_group = group
        self.node_group = answer.get("nodeGroup")
        if self._settings.heartbeat_interval is None:
            self.heartbeat = float(answer["heartbeatSeconds"])
        self.registered.set()
        self._keeper.changed.set()
        self._keeper.urgent = True  # the coordinator hears what is on disk right away
        log.warning(
            "registered with %s as %s (node group %s)",
            self._settings.coordinator,
            self._settings.node_name,
            self.node_group or "none",
        )

    async def _disk(self) -> Disk:
        try:
            usage = await asyncio.to_thread(psutil.disk_usage, str(self._layout.models))
        except OSError as e:
            raise TemporaryError(f"cannot read the cache disk's usage: {e}") from e
        self._metrics.disk_free_bytes.set(usage.free)
        self._metrics.disk_capacity_bytes.set(usage.total)
        return Disk(usage.total, usage.free)


def _backoff(failures: int) -> float:
    return float(min(0.5 * 2 ** min(failures, 10), _MAX_BACKOFF))
