"""A chunk from wherever it comes: the origin on a fetch thread (see `receiving`), or a peer.

Both retry nothing themselves: origin chunks are retried here with backoff (asking only for what
is still missing of the chunk); a chunk copied from a peer is one request, never retried: its
digest must match the one the peer announced before the chunk is journalled, otherwise the
bytes are left unclaimed (fetched again elsewhere) and the peer blamed.

Every written block is accounted for on the event loop (`_advanced`): progress, finished chunks,
and the chunk board when the pull keeps one (every chunk is then hashed as it is written and its
sha256 journalled and put on the board).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from modelcache.contract.errors import TemporaryError
from modelcache.pulling.blocking_http import Aborted, BlockingClient
from modelcache.pulling.capacity import disk_error
from modelcache.pulling.directio import write_at
from modelcache.pulling.journaling import Journal
from modelcache.pulling.peering.board import ChunkBoard
from modelcache.pulling.peering.errors import PeerError
from modelcache.pulling.planning import Chunk
from modelcache.pulling.receiving import Cursor, OriginReceiver, content_range_start
from modelcache.pulling.settings import PullSettings
from modelcache.pulling.transfers import FileTransfer

log = logging.getLogger(__name__)

WrittenCallback = Callable[[FileTransfer, int, bool], None]
"""(transfer, bytes written, whether they came from a peer)"""


@dataclass(frozen=True, slots=True)
class PeerChunk:
    """Where to copy one chunk from a peer, and the sha256 the copy must have."""

    node: str
    url: str
    """The chunk's file on the peer: ``<peer>/v1/peer/models/<key>/files/<index>``."""
    token: str | None
    sha256: str


class ChunkFetcher:
    """Fetches a pull's chunks; `close` it to stop its threads (at once, even mid-body)."""

    def __init__(
        self,
        headers: Mapping[str, str],
        settings: PullSettings,
        journal: Journal,
        io: ThreadPoolExecutor,
        on_written: WrittenCallback,
        limiter: AsyncLimiter | None = None,
        board: ChunkBoard | None = None,
        peer_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._plain_headers = {"Accept-Encoding": "identity"}
        self._settings = settings
        self._journal = journal
        self._io = io
        self._on_written = on_written
        self._board = board
        """Kept current with this pull's chunks; chunks are hashed only when there is one."""
        self._peer_session = peer_session
        # A limiter passed in is shared with other pulls (a node-wide cap); else one per pull.
        self._limiter = limiter or (
            AsyncLimiter(settings.max_bandwidth, 1.0) if settings.max_bandwidth else None
        )
        self._loop = asyncio.get_running_loop()
        self._client = BlockingClient(
            connections=settings.concurrency,
            connect_timeout=settings.connect_timeout,
            stall_timeout=settings.stall_timeout,
            user_agent="modelcache",
        )
        # One thread per worker: a worker waits on at most one origin request at a time.
        self._threads = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="modelcache-fetch"
        )
        self._origin = OriginReceiver(
            self._client,
            headers,
            settings,
            journal,
            self._advanced,
            self._loop,
            self._throttle_from_thread if self._limiter is not None else None,
        )

    def close(self) -> None:
        """Stop every fetch thread: their sockets are shut down, so this takes moments even
        when a body stalls. Blocks until they are gone (they write into the pull's files)."""
        self._client.abort()
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._client.close()
        self._origin.close()

    async def fetch(self, transfer: FileTransfer, chunk: Chunk) -> None:
        """Fetch one chunk from the source (or, if the server ignores Range, the whole file),
        retrying."""
        cursor = Cursor(position=chunk.start)
        if self._board is not None:
            cursor.chunk_hash = hashlib.sha256()
            self._board.fetching(transfer.index, chunk.index, 0)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.attempts_per_chunk),
            wait=_backoff(self._settings),
            retry=retry_if_exception_type(TemporaryError),
            before_sleep=_log_retry(transfer, chunk),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._loop.run_in_executor(
                        self._threads, self._origin.receive, transfer, chunk, cursor
                    )
        finally:
            if self._board is not None:
                self._board.not_fetching(transfer.index, chunk.index)

    async def fetch_from_peer(self, transfer: FileTransfer, chunk: Chunk, peer: PeerChunk) -> None:
        """Copy one chunk from a peer, once: any failure is a `PeerError` for the caller to
        take elsewhere. Nothing is journalled unless the whole chunk matches `peer.sha256`."""
        cursor = Cursor(position=chunk.start, chunk_hash=hashlib.sha256(), peer=peer.node)
        what = f"{transfer.remote.path} chunk {chunk.index} from peer {peer.node}"
        headers = {"Range": f"bytes={chunk.start}-{chunk.end - 1}", **self._plain_headers}
        if peer.token:
            headers["Authorization"] = f"Bearer {peer.token}"
        try:
            await self._copy_from_peer(transfer, chunk, cursor, peer, headers, what)
        except PeerError as e:
            # The chunk starts over from another source: what was written of it does not count.
            e.discarded = cursor.position - chunk.start
            transfer.bytes_written -= e.discarded
            raise

    async def _copy_from_peer(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        peer: PeerChunk,
        headers: dict[str, str],
        what: str,
    ) -> None:
        assert self._peer_session is not None, "peer copies need the peer session"
        try:
            async with self._peer_session.get(
                peer.url, headers=headers, timeout=_peer_timeout(self._settings, chunk)
            ) as resp:
                if resp.status == 503:
                    raise PeerError(peer.node, f"{what}: busy (HTTP 503)", busy=True)
                if resp.status != 206:
                    raise PeerError(peer.node, f"{what}: HTTP {resp.status}")
                if content_range_start(resp.headers.get("Content-Range")) != chunk.start:
                    raise PeerError(peer.node, f"{what}: answered a different range")
                await self._stream(resp, transfer, chunk, cursor, peer)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            raise PeerError(peer.node, f"{what}: {type(e).__name__}: {e}") from e
        except TemporaryError as e:
            if isinstance(e, PeerError):
                raise
            raise PeerError(peer.node, f"{what}: {e}") from e

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        peer: PeerChunk,
    ) -> None:
        """Copy a peer's body into the file, gathered into blocks of `write_block`."""
        pending: list[bytes] = []
        pending_len = 0
        # iter_any hands over the buffers as received; iter_chunked would join them (a copy).
        async for piece in resp.content.iter_any():
            room = chunk.end - cursor.position - pending_len
            if len(piece) > room:
                piece = piece[:room]
            pending.append(piece)
            pending_len += len(piece)
            if (
                pending_len >= self._settings.write_block
                or pending_len == chunk.end - cursor.position
            ):
                await self._flush(transfer, chunk, cursor, peer, pending)
                pending, pending_len = [], 0
                if cursor.position >= chunk.end:
                    break
        if pending:
            await self._flush(transfer, chunk, cursor, peer, pending)
        if cursor.position < chunk.end:
            raise TemporaryError(
                f"{transfer.remote.path}: body ended at byte {cursor.position}, expected "
                f"{chunk.end}"
            )

    async def _flush(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        peer: PeerChunk,
        pieces: list[bytes],
    ) -> None:
        length = sum(len(p) for p in pieces)
        finished = cursor.finished_by(transfer, chunk, cursor.position + length)
        try:
            digest = await self._loop.run_in_executor(
                self._io, self._write_peer_copy, transfer, chunk, pieces, cursor, peer, finished
            )
        except OSError as e:
            raise disk_error(transfer.path, e) from e
        cursor.position += length
        if digest is None:
            self._advanced(transfer, chunk, cursor, length, cursor.position, [], "")
            raise PeerError(
                peer.node,
                f"{transfer.remote.path} chunk {chunk.index}: the copy does not match the digest "
                "the peer announced; discarded",
                corrupt=True,
            )
        self._advanced(transfer, chunk, cursor, length, cursor.position, finished, digest)

    def _write_peer_copy(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        pieces: list[bytes],
        cursor: Cursor,
        peer: PeerChunk,
        finished: list[int],
    ) -> str | None:
        """Runs on an I/O thread: the bytes first, then their journal record. Answers the
        finished chunk's sha256 ("" before the chunk is finished), or None for a copy that does
        not match (not journalled, and undone from the trailing hasher)."""
        offset = cursor.position
        write_at(transfer.fd, transfer.direct_fd, pieces, offset)
        assert cursor.chunk_hash is not None
        for piece in pieces:
            cursor.chunk_hash.update(piece)
        hasher = transfer.hasher
        if hasher is not None:
            # Hashed tentatively, to be undone if the chunk is bad; never held (see
            # `TrailingHasher.offer_tentatively`).
            if offset == chunk.start:
                cursor.checkpoint = hasher.offer_tentatively(offset, pieces)
            else:
                hasher.offer(offset, pieces)
        if not finished:
            return ""
        digest = cursor.chunk_hash.hexdigest()
        if digest != peer.sha256:
            if hasher is not None and cursor.checkpoint is not None:
                hasher.rewind(cursor.checkpoint)
            return None
        self._journal.record(transfer.index, chunk.index, digest)
        return digest

    def _advanced(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        length: int,
        end: int,
        finished: list[int],
        digest: str,
    ) -> None:
        """On the event loop, after `length` bytes of `chunk` up to `end` were written (and
        `finished` chunks journalled with `digest`)."""
        transfer.bytes_written = min(transfer.size, transfer.bytes_written + length)
        self._on_written(transfer, length, cursor.peer is not None)
        if finished:
            transfer.mark_done(finished, digest, cursor.peer)
            if self._board is not None and digest and len(finished) == 1:
                self._board.add(transfer.index, finished[0], digest)
        elif self._board is not None and cursor.peer is None and not cursor.streaming:
            self._board.fetching(transfer.index, chunk.index, end - chunk.start)

    def _throttle_from_thread(self, amount: int) -> None:
        """Wait on a fetch thread for the loop's limiter (it may be shared with other pulls)."""
        waiting = asyncio.run_coroutine_threadsafe(self._throttle(amount), self._loop)
        while True:
            try:
                waiting.result(timeout=0.2)
                return
            except TimeoutError:
                if self._client.aborted:
                    waiting.cancel()
                    raise Aborted from None

    async def _throttle(self, amount: int) -> None:
        assert self._limiter is not None
        burst = int(self._limiter.max_rate)
        while amount > 0:
            step = min(amount, burst)
            await self._limiter.acquire(step)
            amount -= step


def _peer_timeout(settings: PullSettings, chunk: Chunk) -> aiohttp.ClientTimeout:
    """A peer that stalls or crawls loses the chunk to another source: at least
    `peer_min_rate` bytes per second, whatever the chunk size."""
    total = max(settings.peer_stall_timeout, chunk.length / settings.peer_min_rate)
    return aiohttp.ClientTimeout(
        total=total, sock_connect=settings.peer_stall_timeout, sock_read=settings.peer_stall_timeout
    )


def _backoff(settings: PullSettings) -> Callable[[RetryCallState], float]:
    jittered = wait_random_exponential(
        multiplier=settings.retry_base_delay, max=settings.retry_max_delay
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TemporaryError) and error.retry_after is not None:
            return min(error.retry_after, settings.retry_max_delay)
        return float(jittered(state))

    return wait


def _log_retry(transfer: FileTransfer, chunk: Chunk) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "retrying %s chunk %d in %.1fs (attempt %d): %s",
            transfer.remote.path,
            chunk.index,
            delay,
            state.attempt_number,
            error,
        )

    return before_sleep
