"""`pull`: make a destination folder hold exactly a source's files, verified, or leave it alone."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from aiolimiter import AsyncLimiter

from modelcache.contract.errors import (
    DestinationConflictError,
    IntegrityError,
    ModelCacheError,
    SourceNotFoundError,
)
from modelcache.contract.peer_wire import FILE_PATH
from modelcache.contract.quantities import format_bytes
from modelcache.contract.uris import ModelSource, parse_source_uri
from modelcache.pulling.capacity import disk_error, ensure_free_space
from modelcache.pulling.directio import ALIGN, open_direct
from modelcache.pulling.fetching import ChunkAccounting, ChunkFetcher, PeerChunk
from modelcache.pulling.journaling import Journal, open_journal
from modelcache.pulling.listing import RemoteListing
from modelcache.pulling.manifests import Manifest, read_manifest, write_manifest
from modelcache.pulling.peering import BoardFile, ChunkBoard, PeerGroup
from modelcache.pulling.peering.board import fill_published
from modelcache.pulling.peering.errors import PeerError
from modelcache.pulling.planning import in_fetch_order, plan_chunks
from modelcache.pulling.reusing import link_unchanged
from modelcache.pulling.safety import check_listing
from modelcache.pulling.scheduling import ChunkScheduler
from modelcache.pulling.settings import PullSettings, SourceCredentials
from modelcache.pulling.sources import list_source
from modelcache.pulling.staging import (
    StagingPaths,
    exclusive_lock,
    fsync_tree_dirs,
    publish,
    recover_publish,
)
from modelcache.pulling.transfers import FileTransfer
from modelcache.pulling.verifying import TrailingHasher, check_published

if TYPE_CHECKING:
    from modelcache.pulling.peer_copying import PeerCopier

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PullProgress:
    """Sent after every write; cheap to build, so callers throttle their own display."""

    path: str
    file_done: int
    file_total: int
    done: int
    total: int
    fetched: int = 0
    """Bytes that crossed the network in this run (`done` also counts what a resume kept)."""
    from_peers: int = 0
    """Of `fetched`, the bytes that came from peers rather than the origin."""


ProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True, slots=True)
class PullResult:
    dest: Path
    source: str
    revision: str
    files: int
    total_bytes: int
    fetched_bytes: int
    """Bytes that crossed the network in this run (a resumed pull fetches only the rest)."""
    seconds: float
    up_to_date: bool
    """True when the destination already held this exact revision and nothing was fetched."""
    peer_bytes: int = 0
    """Of `fetched_bytes`, the bytes that came from peers rather than the origin."""


async def pull(
    uri: str,
    dest: Path,
    *,
    settings: PullSettings,
    credentials: SourceCredentials,
    source: ModelSource | None = None,
    progress: ProgressCallback | None = None,
    verify_digests: bool = False,
    limiter: AsyncLimiter | None = None,
    peers: PeerGroup | None = None,
    board: ChunkBoard | None = None,
) -> PullResult:
    """Pull `uri` into the folder `dest`, resuming a partial pull of the same source.

    `verify_digests` re-hashes an already published model instead of checking sizes only.
    `limiter` (bytes per second) is shared with other pulls when several must fit one cap;
    without it `settings.max_bandwidth` caps this pull alone (peer bytes are not capped by it).
    `peers`: fetch chunks from these peers where they have them, from the origin otherwise.
    `board`: kept current with the verified chunks this pull holds, for serving peers; it is
    completed on publish (pointing at `dest`) and closed when the pull fails.
    """
    started = time.monotonic()
    source = source or parse_source_uri(uri)
    paths = StagingPaths(Path(os.path.abspath(dest)))  # noqa: ASYNC240 (getcwd, no disk I/O)
    listing = await list_source(source, uri, credentials, settings)
    listing = listing.filtered(settings.include, settings.exclude)
    if not listing.files:
        filtered = " matching --include/--exclude" if settings.include or settings.exclude else ""
        raise SourceNotFoundError(f"{uri} has no files{filtered}: nothing to pull")
    check_listing(uri, listing.files, max_files=settings.max_files)
    with _local_disk_errors(paths.dest), exclusive_lock(paths):
        await asyncio.to_thread(recover_publish, paths)
        if await _already_published(paths, listing, verify_digests):
            manifest = await asyncio.to_thread(read_manifest, paths.manifest)
            if board is not None and manifest is not None:
                fill_published(board, manifest, paths.dest)
            return _result(paths, listing, fetched=0, started=started, up_to_date=True)
        await asyncio.to_thread(_refuse_foreign_destination, paths)
        run = _PullRun(
            listing,
            paths,
            settings,
            progress,
            limiter,
            trust_published=not verify_digests,
            peers=peers,
            board=board,
        )
        try:
            fetched = await run.execute()
        finally:
            if board is not None and not board.complete:
                board.close()
    return _result(
        paths,
        listing,
        fetched=fetched,
        started=started,
        up_to_date=False,
        peer_bytes=run.from_peers,
    )


def _result(
    paths: StagingPaths,
    listing: RemoteListing,
    *,
    fetched: int,
    started: float,
    up_to_date: bool,
    peer_bytes: int = 0,
) -> PullResult:
    return PullResult(
        dest=paths.dest,
        source=listing.source,
        revision=listing.revision,
        files=len(listing.files),
        total_bytes=listing.total_bytes,
        fetched_bytes=fetched,
        seconds=time.monotonic() - started,
        up_to_date=up_to_date,
        peer_bytes=peer_bytes,
    )


async def _already_published(paths: StagingPaths, listing: RemoteListing, digests: bool) -> bool:
    manifest = await asyncio.to_thread(read_manifest, paths.manifest)
    if manifest is None or manifest.fingerprint != listing.fingerprint():
        return False
    problems = await asyncio.to_thread(check_published, paths.dest, manifest, digests=digests)
    for problem in problems:
        log.warning("%s: %s: %s; pulling again", paths.dest, problem.path, problem.reason)
    return not problems


def _refuse_foreign_destination(paths: StagingPaths) -> None:
    """Never replace a folder modelcache did not publish (an empty one is fine)."""
    if paths.manifest.exists() or not os.path.lexists(paths.dest):
        return
    if paths.dest.is_dir() and not paths.dest.is_symlink() and not any(paths.dest.iterdir()):
        return
    raise DestinationConflictError(
        f"{paths.dest} exists and was not created by modelcache: remove it or choose another "
        "destination"
    )


class _PullRun:
    """One attempt at moving the missing bytes of a listing into staging, then publishing."""

    def __init__(
        self,
        listing: RemoteListing,
        paths: StagingPaths,
        settings: PullSettings,
        progress: ProgressCallback | None,
        limiter: AsyncLimiter | None,
        *,
        trust_published: bool,
        peers: PeerGroup | None = None,
        board: ChunkBoard | None = None,
    ) -> None:
        self._listing = listing
        self._peers = peers
        self._board = board
        self.from_peers = 0
        self._limiter = limiter
        self._trust_published = trust_published
        self._paths = paths
        self._settings = settings
        self._progress = progress
        self._done_bytes = 0
        self._fetched = 0
        # Blocking work runs on small pools (and the fetcher's threads), all joined before any
        # file descriptor is closed, so a cancelled pull never has a thread writing into a
        # recycled descriptor. Writers also hash what they write (see `write_threads`).
        self._writes = ThreadPoolExecutor(
            max_workers=settings.write_threads, thread_name_prefix="modelcache-write"
        )
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="modelcache-io")

    async def execute(self) -> int:
        listing, paths = self._listing, self._paths
        journal, chunk_size, finished = await self._in_thread(
            open_journal, paths, listing.fingerprint(), self._settings.chunk_size
        )
        plan = plan_chunks([f.size for f in listing.files], chunk_size)
        transfers = [
            FileTransfer(i, f, paths.files / f.path, plan[i], finished)
            for i, f in enumerate(listing.files)
        ]
        self._chunk_size = chunk_size
        if self._board is not None:
            self._board.start(
                listing.fingerprint(),
                chunk_size,
                [BoardFile(f.path, f.size) for f in listing.files],
                paths.files,
            )
            for (file_index, chunk_index), digest in finished.items():
                if digest:
                    self._board.add(file_index, chunk_index, digest)
        try:
            if self._trust_published:
                reused = await self._in_thread(link_unchanged, paths, transfers, journal)
                if reused:
                    log.info("%s: reusing %s of unchanged files", paths.dest, format_bytes(reused))
            # Linked and resumed files already hold their blocks: only the rest must fit.
            needed = await self._in_thread(_unallocated_bytes, transfers)
            await ensure_free_space(
                paths.dest.parent,
                needed,
                self._settings.min_free_bytes,
                what=f"pulling {listing.source} ({format_bytes(listing.total_bytes)})",
            )
            await self._in_thread(_open_and_preallocate, transfers, self._settings.direct_io)
            self._done_bytes = sum(t.bytes_written for t in transfers)
            await self._transfer_all(transfers, journal)
            await self._in_thread(self._publish, transfers)
            if self._board is not None:
                self._board.published(self._paths.dest)
        finally:
            # Brief: what is running is at most one block write or hash read per thread.
            self._writes.shutdown(wait=True, cancel_futures=True)
            self._io.shutdown(wait=True, cancel_futures=True)
            _close_all(transfers)
            journal.close()
        return self._fetched

    async def _transfer_all(self, transfers: list[FileTransfer], journal: Journal) -> None:
        order = in_fetch_order([t.chunks for t in transfers])
        fingerprint = self._listing.fingerprint()
        account = ChunkAccounting(self._on_written, self._board)
        async with contextlib.AsyncExitStack() as stack:
            tracker, copier = None, None
            if self._peers is not None:
                # Only pulls with peers need aiohttp's client: a plain pull starts without it.
                from modelcache.pulling.peer_copying import PeerCopier, open_peer_session
                from modelcache.pulling.peering.tracking import PeerTracker

                peer_session = await stack.enter_async_context(open_peer_session(self._settings))
                tracker = PeerTracker(
                    self._peers,
                    peer_session,
                    fingerprint=fingerprint,
                    chunk_size=self._chunk_size,
                    needed=lambda key: not transfers[key[0]].done[key[1]],
                    on_change=lambda: scheduler.wake(),
                )
                copier = PeerCopier(peer_session, self._settings, journal, self._writes, account)
            scheduler = ChunkScheduler(
                transfers, order, self._settings, fingerprint=fingerprint, tracker=tracker
            )
            fetcher = ChunkFetcher(
                self._listing.request_headers,
                self._settings,
                journal,
                account,
                self._limiter,
                board=self._board,
            )
            stack.push_async_callback(fetcher.aclose)
            workers = self._settings.concurrency
            with _first_error_of_group():
                async with asyncio.TaskGroup() as group:
                    watching = None
                    if tracker is not None:
                        watching = group.create_task(tracker.run(), name="peer-maps")
                    for i in range(workers):
                        group.create_task(
                            self._work(scheduler, fetcher, copier, transfers),
                            name=f"pull-worker-{i}",
                        )
                    verifiers = [
                        group.create_task(
                            self._verify(t, scheduler, journal), name=f"verify:{t.remote.path}"
                        )
                        for t in transfers
                    ]
                    await asyncio.wait(verifiers)
                    scheduler.stop()
                    if watching is not None:
                        watching.cancel()

    async def _work(
        self,
        scheduler: ChunkScheduler,
        fetcher: ChunkFetcher,
        copier: PeerCopier | None,
        transfers: list[FileTransfer],
    ) -> None:
        while (assignment := await scheduler.next()) is not None:
            chunk, peer = assignment.chunk, assignment.peer
            transfer = transfers[chunk.file_index]
            if peer is None:
                try:
                    await fetcher.fetch(transfer, chunk)
                finally:
                    scheduler.finished(assignment)
                continue
            assert self._peers is not None
            assert copier is not None
            source = PeerChunk(
                peer.node,
                peer.url + FILE_PATH.format(key=self._peers.storage_key, index=chunk.file_index),
                self._peers.token,
                peer.held[assignment.key],
            )
            try:
                await copier.copy(transfer, chunk, source)
            except PeerError as e:
                self._done_bytes -= e.discarded
                log.log(
                    logging.WARNING if e.corrupt else logging.INFO,
                    "%s; taking it elsewhere",
                    e,
                )
                scheduler.peer_failed(assignment, e)
            else:
                scheduler.finished(assignment)

    async def _verify(
        self, transfer: FileTransfer, scheduler: ChunkScheduler, journal: Journal
    ) -> None:
        """Hash the file as its prefix fills in; when complete, check, fsync, or fetch again."""
        digest = None if transfer.reused else transfer.remote.digest
        for refetch in range(self._settings.refetches_per_file + 1):
            if transfer.hasher is not None:
                transfer.hasher.release()
            hasher = transfer.hasher = TrailingHasher(digest, transfer.size) if digest else None
            transfer.changed.set()
            while True:
                await transfer.changed.wait()
                transfer.changed.clear()
                if hasher is not None:
                    frontier = transfer.contiguous_end()
                    if frontier > hasher.offset:
                        await self._in_thread(
                            hasher.advance_to, transfer.fd, frontier, transfer.direct_fd
                        )
                if transfer.complete and (hasher is None or hasher.offset == transfer.size):
                    break
            size = (await self._in_thread(os.fstat, transfer.fd)).st_size
            if size == transfer.size and (hasher is None or hasher.matches()):
                await self._in_thread(os.fsync, transfer.fd)
                return
            if hasher is not None and digest is not None:
                expected, actual = f"{digest.algorithm} {digest.hex}", hasher.hexdigest()
            else:
                expected, actual = f"size {transfer.size}", f"size {size}"
            problem = (
                f"{transfer.remote.path} from {self._listing.source}: expected {expected}, "
                f"got {actual}"
            )
            if refetch == self._settings.refetches_per_file:
                raise IntegrityError(
                    f"{problem}, after {refetch + 1} downloads: the source serves corrupt data "
                    "or its listing is wrong; report it to the source's owner"
                )
            log.warning("%s; fetching the file again", problem)
            await self._in_thread(journal.forget_file, transfer.index)
            if self._board is not None:
                self._board.forget_file(transfer.index)
            self._done_bytes -= transfer.bytes_written
            scheduler.refetch(transfer)  # before the reset: it reads who gave the chunks
            transfer.reset()

    def _on_written(self, transfer: FileTransfer, length: int, from_peer: bool) -> None:
        self._done_bytes += length
        self._fetched += length
        if from_peer:
            self.from_peers += length
        if self._progress is not None:
            self._progress(
                PullProgress(
                    transfer.remote.path,
                    transfer.bytes_written,
                    transfer.size,
                    self._done_bytes,
                    self._listing.total_bytes,
                    self._fetched,
                    self.from_peers,
                )
            )

    def _publish(self, transfers: list[FileTransfer]) -> None:
        fsync_tree_dirs(self._paths.files)
        digests = [tuple(t.digests) if all(t.digests) else () for t in transfers]
        manifest = Manifest.for_listing(
            self._listing,
            chunk_size=self._chunk_size if self._board is not None else 0,
            chunk_digests=digests if self._board is not None else (),
        )
        write_manifest(self._paths.staged_manifest, manifest)
        publish(self._paths)

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))


def _unallocated_bytes(transfers: list[FileTransfer]) -> int:
    """Bytes the staging files still need from the filesystem (resumed files hold theirs)."""
    needed = 0
    for t in transfers:
        try:
            allocated = t.path.stat().st_blocks * 512
        except FileNotFoundError:
            allocated = 0
        needed += max(0, t.size - allocated)
    return needed


def _open_and_preallocate(transfers: list[FileTransfer], direct_io: bool) -> None:
    for t in transfers:
        t.path.parent.mkdir(parents=True, exist_ok=True)
        t.fd = os.open(t.path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(t.fd).st_size > t.size:
            os.ftruncate(t.fd, t.size)
        if t.size:
            # Reserve the blocks now: a full disk fails here, not halfway through the pull, and
            # the file is laid out contiguously however the chunks arrive.
            os.posix_fallocate(t.fd, 0, t.size)
        if direct_io and t.size >= ALIGN:
            t.direct_fd = open_direct(t.path)


def _close_all(transfers: list[FileTransfer]) -> None:
    for t in transfers:
        for fd in (t.fd, t.direct_fd):
            if fd >= 0:
                os.close(fd)
        t.fd = t.direct_fd = -1


@contextlib.contextmanager
def _local_disk_errors(dest: Path) -> Iterator[None]:
    """Network errors are already ours by here; an OSError left is the local disk's."""
    try:
        yield
    except OSError as e:
        raise disk_error(dest, e) from e


@contextlib.contextmanager
def _first_error_of_group() -> Iterator[None]:
    """Raise a task group's most telling error by itself: ours first, then whatever came."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = _leaves(group)
        ours = [e for e in errors if isinstance(e, ModelCacheError)]
        raise (ours or errors)[0] from group


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
