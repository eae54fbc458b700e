"""Chunks from the origin, received on fetch threads (see `receiving`) and retried here with
backoff, asking only for what is still missing of a chunk.

Every written block, the origin's or a peer's (see `peer_copying`), is accounted for on the event
loop by `ChunkAccounting`: progress, finished chunks, and the chunk board when the pull keeps one
(every chunk is then hashed as it is written and its sha256 journalled and put on the board).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
from modelcache.pulling.journaling import Journal
from modelcache.pulling.peering.board import ChunkBoard
from modelcache.pulling.planning import Chunk
from modelcache.pulling.receiving import Cursor, OriginReceiver
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


class ChunkAccounting:
    """What the event loop does after each written block, wherever the bytes came from."""

    def __init__(self, on_written: WrittenCallback, board: ChunkBoard | None) -> None:
        self._on_written = on_written
        self._board = board
        """Kept current with this pull's chunks (when the pull serves peers)."""

    def __call__(
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


class ChunkFetcher:
    """Fetches a pull's chunks from the origin; `aclose` it to stop its threads (at once, even
    mid-body)."""

    def __init__(
        self,
        headers: Mapping[str, str],
        settings: PullSettings,
        journal: Journal,
        account: ChunkAccounting,
        limiter: AsyncLimiter | None = None,
        board: ChunkBoard | None = None,
    ) -> None:
        self._settings = settings
        self._board = board
        """Kept current with this pull's chunks; chunks are hashed only when there is one."""
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
            account,
            self._loop,
            self._throttle_from_thread if self._limiter is not None else None,
        )

    async def aclose(self) -> None:
        """Stop every fetch thread and wait until they are gone: they write into the pull's
        files, which must not be closed under them. Their sockets are shut down, so this takes
        moments even when a body stalls (a connect under way runs to its timeout). The wait is
        off the event loop, and a second cancellation does not cut it short: it is re-raised
        once the threads are gone."""
        self._client.abort()
        joined = asyncio.ensure_future(
            asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)
        )
        cancelled = False
        while not joined.done():
            try:
                await asyncio.shield(joined)
            except asyncio.CancelledError:
                cancelled = True
        self._client.close()
        self._origin.close()
        if cancelled:
            raise asyncio.CancelledError

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
