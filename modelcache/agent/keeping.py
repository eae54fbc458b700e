"""Make the node hold what it is told: one supervised task per model being pulled or deleted.

`ModelKeeper` owns the statuses the agent reports. It reconciles the desired list against what
is on disk and what is running: a wanted model that is not published gets a pull task (at most
`max_parallel_pulls` run, the rest wait as pending); a model that left the list gets a deletion
task that waits a grace period first. Deletions need a positive instruction: a list received from
the coordinator in this run. A list saved by an earlier run only ever adds work, so a restart
while the coordinator is down never deletes anything.

Every pull gets a chunk board on the `Shelf` (peers of the node group read what it has verified,
while it runs and after it publishes) and the model's peers from the list, kept current as new
lists arrive. A model's board is closed before its files are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psutil
from aiolimiter import AsyncLimiter

from modelcache.agent.failures import is_temporary, reason_of
from modelcache.agent.layout import CacheLayout
from modelcache.agent.memory import release_freed_memory
from modelcache.agent.metrics import AgentMetrics
from modelcache.agent.model_states import ModelStatus
from modelcache.agent.settings import AgentSettings
from modelcache.agent.shelf import Shelf
from modelcache.contract.agent_wire import DesiredList, ModelReport, WantedModel
from modelcache.contract.errors import (
    InsufficientDiskError,
    ModelCacheError,
    TemporaryError,
)
from modelcache.contract.objects import format_time
from modelcache.contract.quantities import format_bytes
from modelcache.pulling import PullProgress, PullResult, pull
from modelcache.pulling.inspecting import inspect_published, remove_model, staged_bytes
from modelcache.pulling.peering import PeerGroup

log = logging.getLogger(__name__)


class ModelKeeper:
    def __init__(self, settings: AgentSettings, layout: CacheLayout, metrics: AgentMetrics) -> None:
        self._settings = settings
        self._layout = layout
        self._metrics = metrics
        self.statuses: dict[str, ModelStatus] = {}
        self.applied_generation = 0
        self._wanted: dict[str, WantedModel] = {}
        self._live = False
        self._on_disk: set[str] = set()
        """Names under models/ that may hold bytes: storage keys, and foreign names."""
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self._removing: set[str] = set()
        self._failed_at: dict[str, float] = {}
        self._rehash: set[str] = set()
        self._reserved: dict[str, int] = {}
        self._reserve_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.max_parallel_pulls)
        bandwidth = settings.max_bandwidth
        self._limiter = AsyncLimiter(bandwidth, 1.0) if bandwidth else None
        self._closing = False
        self.shelf = Shelf(layout, self._is_published)
        self._peer_groups: dict[str, PeerGroup] = {}
        """The live peer list of every running pull, by storage key."""
        self._peer_token: str | None = None
        self.changed = asyncio.Event()
        self.urgent = False
        """A state changed (not only progress): report without waiting for the throttle."""

    # --- what the rest of the agent calls -----------------------------------------------------

    async def start(self, saved: DesiredList | None) -> None:
        """Take stock of the disk, then act on the list an earlier run saved (adding only)."""
        entries = await asyncio.to_thread(self._layout.scan)
        self._on_disk = set(entries.keys) | set(entries.foreign)
        for key in sorted(entries.keys):
            await self._take_stock(key, digests=self._settings.verify_on_start)
        if entries.foreign:
            log.warning(
                "models/ holds %s, not created by modelcache: removed once the coordinator's "
                "list confirms no model owns them",
                ", ".join(entries.foreign),
            )
        if saved is not None:
            self._wanted = dict(saved.models)
            self.applied_generation = saved.generation
            self._take_peer_token(saved.peer_token)
        self.reconcile()
        self._notify(urgent=True)

    def apply(self, desired: DesiredList) -> None:
        """A list from the coordinator: a positive instruction, deletions included."""
        for key, want in desired.models.items():
            before = self._wanted.get(key)
            if before is not None and before != want:
                self._failed_at.pop(key, None)  # a new spec deserves a new try at once
        self._wanted = dict(desired.models)
        self._live = True
        self.applied_generation = desired.generation
        self._take_peer_token(desired.peer_token)
        for key, group in self._peer_groups.items():
            running = self._wanted.get(key)
            if running is not None:  # a pull running off the list is cancelled by its deletion
                group.update(running.peers, self._peer_token)
        self.reconcile()
        self._notify(urgent=True)

    def reports(self) -> list[ModelReport]:
        return [status.report() for status in self.statuses.values()]

    def reconcile(self) -> None:
        if self._closing:
            return
        now = time.monotonic()
        for key in self._wanted:
            deletion = self._deletions.get(key)
            if deletion is not None and key not in self._removing:
                deletion.cancel()  # wanted again within the grace period: keep the files
            if key in self._pulls or key in self._removing:
                continue
            status = self.statuses.get(key)
            if status is not None and status.state == "ModelDownloaded":
                continue
            failed_at = self._failed_at.get(key)
            if failed_at is not None and now - failed_at < self._settings.error_retry_interval:
                continue
            self._spawn(self._pulls, key, self._keep(key), f"pull:{key}")
        if not self._live:
            return
        for name in (self._on_disk | set(self.statuses)) - set(self._wanted):
            if name not in self._deletions:
                self._spawn(self._deletions, name, self._delete_later(name), f"delete:{name}")

    async def verify_all(self) -> dict[str, str]:
        """Re-hash every published model; damaged ones are pulled again. Key -> verdict."""
        verdicts: dict[str, str] = {}
        for key, status in list(self.statuses.items()):
            if status.state == "ModelDownloaded" and key not in self._pulls:
                verdicts[key] = await self._take_stock(key, digests=True)
        self.reconcile()
        return verdicts

    async def rescan(self) -> None:
        """Sizes and edited files of every published model; refresh the disk gauges."""
        for key, status in list(self.statuses.items()):
            if status.state == "ModelDownloaded" and key not in self._pulls:
                await self._take_stock(key, digests=False)
        self.reconcile()
        await self.refresh_disk_metrics()

    async def refresh_disk_metrics(self) -> None:
        usage = await asyncio.to_thread(psutil.disk_usage, str(self._layout.models))
        self._metrics.disk_free_bytes.set(usage.free)
        self._metrics.disk_capacity_bytes.set(usage.total)
        used = sum(s.bytes_done for s in self.statuses.values())
        self._metrics.cache_used_bytes.set(used)

    async def close(self) -> None:
        """Stop every pull (its journal is the checkpoint) and every pending deletion; end
        peers' long polls."""
        self._closing = True
        tasks = [*self._pulls.values(), *self._deletions.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.shelf.close()

    @property
    def busy(self) -> int:
        return len(self._pulls)

    # --- tasks --------------------------------------------------------------------------------

    def _spawn(
        self,
        into: dict[str, asyncio.Task[None]],
        key: str,
        work: Coroutine[Any, Any, None],
        name: str,
    ) -> None:
        task = asyncio.create_task(work, name=name)
        into[key] = task

        def finished(done: asyncio.Task[None]) -> None:
            if into.get(key) is done:
                del into[key]
            if not done.cancelled() and done.exception() is not None:
                log.error("task %s died", name, exc_info=done.exception())
            if not self._closing:
                self.reconcile()

        task.add_done_callback(finished)

    async def _keep(self, key: str) -> None:
        """Pull one model until it is published, retrying temporary failures with backoff."""
        status = self.statuses.setdefault(key, ModelStatus(key))
        if status.state != "ModelDownloading":
            status.pending()
        self._notify(urgent=True)
        attempt = 0
        while (want := self._wanted.get(key)) is not None:
            started = time.monotonic()
            try:
                async with self._slots:
                    result = await self._pull_once(want, status)
            except ModelCacheError as e:
                if is_temporary(e):
                    attempt += 1
                    delay = min(
                        self._settings.retry_base_delay * 2 ** (attempt - 1),
                        self._settings.retry_max_delay,
                    )
                    if isinstance(e, TemporaryError) and e.retry_after:
                        delay = max(delay, min(e.retry_after, self._settings.retry_max_delay))
                    status.downloading(
                        "Retrying", f"{e}; attempt {attempt} failed, next in {delay:.0f}s"
                    )
                    log.warning("%s: %s", key, status.message)
                    self._notify(urgent=True)
                    await asyncio.sleep(delay)
                    continue
                self._fail(key, status, reason_of(e), str(e))
                return
            except Exception as e:  # a bug in one pull must not stop the others
                log.exception("%s: unexpected error", key)
                self._fail(key, status, "InternalError", f"{type(e).__name__}: {e}")
                return
            self._failed_at.pop(key, None)
            self._rehash.discard(key)
            self._on_disk.add(key)
            if not result.up_to_date:
                self._metrics.pull_seconds.observe(time.monotonic() - started)
            status.downloaded(result.total_bytes)
            self._metrics.progress.labels(storage_key=key).set(1.0)
            log.info(
                "%s: %s published (%s, %s of it from peers)",
                key,
                want.source_model_uri,
                format_bytes(result.total_bytes),
                format_bytes(result.peer_bytes),
            )
            self._notify(urgent=True)
            return

    async def _pull_once(self, want: WantedModel, status: ModelStatus) -> PullResult:
        key = want.storage_key
        dest = self._layout.model_dir(key)
        await self._reserve(want, dest)
        status.downloading(status.reason if status.reason == "Retrying" else "", status.message)
        self._on_disk.add(key)
        self._notify(urgent=True)
        counted = from_origin = from_peers = 0

        def progressed(progress: PullProgress) -> None:
            nonlocal counted, from_origin, from_peers
            self._reserved.pop(key, None)  # progress means the blocks are allocated
            self._metrics.downloaded_bytes.inc(progress.fetched - counted)
            counted = progress.fetched
            # Counters only go up: a split that wavers between two reports is not undone.
            origin = max(0, progress.fetched - progress.from_peers - from_origin)
            peer = max(0, progress.from_peers - from_peers)
            self._metrics.count_pulled(key, origin=origin, peer=peer)
            from_origin, from_peers = from_origin + origin, from_peers + peer
            if status.reason == "Retrying":
                status.reason = status.message = ""
            status.progressed(progress.done, progress.total)
            self._notify(urgent=False)

        board = self.shelf.pulling(key)
        # No peers yet still gets a group: the next list may name some while this pull runs.
        peers = self._peer_groups[key] = PeerGroup(
            key, self._settings.node_name, want.peers, self._peer_token
        )
        try:
            return await pull(
                want.source_model_uri,
                dest,
                settings=self._settings.pull,
                credentials=self._settings.credentials,
                progress=progressed,
                verify_digests=key in self._rehash,
                limiter=self._limiter,
                peers=peers,
                board=board,
            )
        finally:
            if self._peer_groups.get(key) is peers:
                del self._peer_groups[key]
            self.shelf.pull_ended(key, board)
            self._reserved.pop(key, None)
            task = asyncio.current_task()
            if task is not None and not task.cancelling():  # a cancelled pull just stops
                await asyncio.to_thread(release_freed_memory)

    async def _reserve(self, want: WantedModel, dest: Path) -> None:
        """Refuse a pull the disk cannot hold, counting space that running pulls will take."""
        async with self._reserve_lock:
            staged = await asyncio.to_thread(staged_bytes, dest)
            usage = await asyncio.to_thread(psutil.disk_usage, str(self._layout.models))
            needed = max(0, want.model_size_bytes - staged)
            others = sum(self._reserved.values())
            keep_free = self._settings.pull.min_free_bytes
            available = usage.free - others
            if needed + keep_free > available:
                raise InsufficientDiskError(
                    f"{want.source_model_uri} ({format_bytes(want.model_size_bytes)}) needs "
                    f"{format_bytes(needed)} more on {self._layout.models} keeping "
                    f"{format_bytes(keep_free)} free, but only {format_bytes(available)} is "
                    f"available ({format_bytes(usage.free)} free, {format_bytes(others)} "
                    "reserved by running pulls): free space on this node, or take its node "
                    "group out of caches it cannot hold",
                    needed=needed + keep_free,
                    available=available,
                )
            self._reserved[want.storage_key] = needed

    def _fail(self, key: str, status: ModelStatus, reason: str, message: str) -> None:
        status.failed(reason, message)
        self._failed_at[key] = time.monotonic()
        self._metrics.pull_failures.labels(reason=reason).inc()
        log.warning("%s: %s: %s", key, reason, message)
        self._notify(urgent=True)

    async def _delete_later(self, name: str) -> None:
        await asyncio.sleep(self._settings.deletion_grace)
        self._removing.add(name)
        self.shelf.drop(name)  # peers stop reading before the files go
        try:
            pull_task = self._pulls.get(name)
            if pull_task is not None:
                pull_task.cancel()
                await asyncio.gather(pull_task, return_exceptions=True)
            await asyncio.to_thread(remove_model, self._layout.model_dir(name))
        finally:
            self._removing.discard(name)
        log.info("%s: removed (no cache wants it on this node)", name)
        self._on_disk.discard(name)
        self.statuses.pop(name, None)
        self._failed_at.pop(name, None)
        self._rehash.discard(name)
        self._metrics.forget_model(name)
        self._notify(urgent=True)

    async def _take_stock(self, key: str, *, digests: bool) -> str:
        """Check a published model against its manifest; damaged ones are set to re-pull."""
        published = await asyncio.to_thread(
            inspect_published, self._layout.model_dir(key), digests=digests
        )
        if published is None:
            return "not published"
        if published.intact:
            status = self.statuses.setdefault(key, ModelStatus(key))
            if status.state != "ModelDownloaded":
                status.downloaded(
                    published.manifest.total_bytes, format_time(published.manifest.finished_at)
                )
                self._notify(urgent=True)
            return "intact"
        problems = published.describe_problems()
        log.warning("%s: changed on disk (%s): pulling again", key, problems)
        self.shelf.drop(key)  # its manifest no longer describes its files
        if published.digest_mismatch:
            self._rehash.add(key)
        status = self.statuses.setdefault(key, ModelStatus(key))
        status.pending("FilesChanged", f"files changed on disk ({problems}); pulling again")
        self._notify(urgent=True)
        return f"damaged: {problems}"

    def _is_published(self, key: str) -> bool:
        """Whether peers may be served `key` from its manifest (see `Shelf.find`)."""
        status = self.statuses.get(key)
        published = status is not None and status.state == "ModelDownloaded"
        return published and key not in self._pulls and key not in self._removing

    def _take_peer_token(self, token: str | None) -> None:
        self._peer_token = token
        self.shelf.tokens.update(token)

    def _notify(self, *, urgent: bool) -> None:
        if urgent:
            self.urgent = True
            self._metrics.observe(self.statuses.values())
        self.changed.set()
