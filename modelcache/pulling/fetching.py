"""Ranged GETs into preallocated staging files: retries, throttling, positional writes.

A worker asks for one chunk at a time. Body bytes are gathered up to `write_block` and written
with one positional `pwritev` on the pull's I/O threads; the chunk's journal record is appended in
the same thread call as its last write, so the journal never claims bytes the kernel does not have.
A retry asks only for what is still missing of the chunk.

When the pull keeps a chunk board, every chunk is hashed as it is written (sha256, in the same
thread call) and its digest journalled and put on the board. A chunk copied from a peer is one
request, never retried here: its digest must match the one the peer announced before the chunk is
journalled, otherwise the bytes are left unclaimed (fetched again elsewhere) and the peer blamed.
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
from modelcache.pulling.capacity import disk_error
from modelcache.pulling.directio import write_at
from modelcache.pulling.httperrors import error_for_status
from modelcache.pulling.journaling import Journal
from modelcache.pulling.peering.board import ChunkBoard
from modelcache.pulling.peering.errors import PeerError
from modelcache.pulling.planning import Chunk
from modelcache.pulling.settings import PullSettings
from modelcache.pulling.transfers import FileTransfer
from modelcache.pulling.verifying import HashCheckpoint

log = logging.getLogger(__name__)

_EXPIRED_REDIRECT_STATUSES = {401, 403, 404, 410}
AUTH_HINT = "check the source's credentials (HF_TOKEN, AWS_*) and that they grant read access"

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


@dataclass(slots=True)
class _Cursor:
    """Where the next body byte goes; survives retries of one chunk."""

    position: int
    streaming: bool = False
    chunk_hash: hashlib._Hash | None = None
    """sha256 of the chunk's bytes so far (when chunks are hashed)."""
    checkpoint: HashCheckpoint | None = None
    """The trailing hasher's state before a peer's bytes were offered to it."""
    peer: PeerChunk | None = None


class ChunkFetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        headers: Mapping[str, str],
        settings: PullSettings,
        journal: Journal,
        io: ThreadPoolExecutor,
        on_written: WrittenCallback,
        limiter: AsyncLimiter | None = None,
        board: ChunkBoard | None = None,
        peer_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._session = session
        self._headers = {**headers, "Accept-Encoding": "identity"}
        self._plain_headers = {"Accept-Encoding": "identity"}
        self._redirects: dict[int, str] = {}
        """File index -> where the source redirected it (Hub LFS files go to a CDN). Asking the
        Hub once per file instead of once per chunk spares its rate limits a request per chunk."""
        self._settings = settings
        self._journal = journal
        self._io = io
        self._on_written = on_written
        self._board = board
        self._peer_session = peer_session or session
        """Kept current with this pull's chunks; chunks are hashed only when there is one."""
        # A limiter passed in is shared with other pulls (a node-wide cap); else one per pull.
        self._limiter = limiter or (
            AsyncLimiter(settings.max_bandwidth, 1.0) if settings.max_bandwidth else None
        )

    async def fetch(self, transfer: FileTransfer, chunk: Chunk) -> None:
        """Fetch one chunk from the source (or, if the server ignores Range, the whole file),
        retrying."""
        cursor = _Cursor(position=chunk.start)
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
                    await self._fetch_once(transfer, chunk, cursor)
        finally:
            if self._board is not None:
                self._board.not_fetching(transfer.index, chunk.index)

    async def fetch_from_peer(self, transfer: FileTransfer, chunk: Chunk, peer: PeerChunk) -> None:
        """Copy one chunk from a peer, once: any failure is a `PeerError` for the caller to
        take elsewhere. Nothing is journalled unless the whole chunk matches `peer.sha256`."""
        cursor = _Cursor(position=chunk.start, chunk_hash=hashlib.sha256(), peer=peer)
        what = f"{transfer.remote.path} chunk {chunk.index} from peer {peer.node}"
        headers = {"Range": f"bytes={chunk.start}-{chunk.end - 1}", **self._plain_headers}
        if peer.token:
            headers["Authorization"] = f"Bearer {peer.token}"
        try:
            await self._copy_from_peer(transfer, chunk, cursor, headers, what)
        except PeerError as e:
            # The chunk starts over from another source: what was written of it does not count.
            e.discarded = cursor.position - chunk.start
            transfer.bytes_written -= e.discarded
            raise

    async def _copy_from_peer(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: _Cursor,
        headers: dict[str, str],
        what: str,
    ) -> None:
        assert cursor.peer is not None
        peer = cursor.peer
        try:
            async with self._peer_session.get(
                peer.url, headers=headers, timeout=_peer_timeout(self._settings, chunk)
            ) as resp:
                if resp.status == 503:
                    raise PeerError(peer.node, f"{what}: busy (HTTP 503)", busy=True)
                if resp.status != 206:
                    raise PeerError(peer.node, f"{what}: HTTP {resp.status}")
                if _content_range_start(resp.headers.get("Content-Range")) != chunk.start:
                    raise PeerError(peer.node, f"{what}: answered a different range")
                await self._stream(resp, transfer, chunk, cursor, chunk.end)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            raise PeerError(peer.node, f"{what}: {type(e).__name__}: {e}") from e
        except TemporaryError as e:
            if isinstance(e, PeerError):
                raise
            raise PeerError(peer.node, f"{what}: {e}") from e

    async def _fetch_once(self, transfer: FileTransfer, chunk: Chunk, cursor: _Cursor) -> None:
        if transfer.streaming and not cursor.streaming:
            return  # another worker streams the whole file, this chunk included
        stop = transfer.size if cursor.streaming else chunk.end
        last = "" if cursor.streaming else str(stop - 1)
        what = f"{transfer.remote.path} bytes {cursor.position}-{stop - 1}"
        redirected = self._redirects.get(transfer.index)
        # A remembered redirect target (a pre-signed CDN URL) gets no source credentials.
        url, headers = (
            (redirected, self._plain_headers)
            if redirected
            else (transfer.remote.url, self._headers)
        )
        headers = {**headers, "Range": f"bytes={cursor.position}-{last}"}
        try:
            async with self._session.get(url, headers=headers) as resp:
                if redirected is None and resp.history:
                    self._redirects[transfer.index] = str(resp.url)
                if redirected is not None and resp.status in _EXPIRED_REDIRECT_STATUSES:
                    # Several workers can meet the same expired target at once.
                    self._redirects.pop(transfer.index, None)
                    raise TemporaryError(
                        f"{what}: redirect target answered HTTP {resp.status} (expired?); "
                        "asking the source again",
                        retry_after=0,
                    )
                if resp.status == 206:
                    if _content_range_start(resp.headers.get("Content-Range")) != cursor.position:
                        raise TemporaryError(f"{what}: server answered a different range")
                    await self._stream(resp, transfer, chunk, cursor, stop)
                elif resp.status == 200:
                    # The server ignored Range and sends the whole file. One worker takes the
                    # file over and writes it front to back; the others drop their chunks.
                    if transfer.streaming and not cursor.streaming:
                        return
                    if not cursor.streaming:
                        transfer.streaming = cursor.streaming = True
                        cursor.position = 0
                        log.info("%s: server ignores Range, streaming whole file", what)
                    await self._stream(resp, transfer, chunk, cursor, transfer.size, skip=True)
                else:
                    raise error_for_status(
                        resp.status, resp.headers, what=what, auth_hint=AUTH_HINT
                    )
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            raise TemporaryError(f"{what}: {type(e).__name__}: {e}") from e

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: _Cursor,
        stop: int,
        *,
        skip: bool = False,
    ) -> None:
        """Copy the body into the file from `cursor.position` up to `stop`.

        With `skip`, the body starts at offset 0 and bytes before the cursor are dropped (a retry
        against a server that cannot resume)."""
        to_skip = cursor.position if skip else 0
        pending: list[bytes] = []
        pending_len = 0
        # iter_any hands over the buffers as received; iter_chunked would join them (a copy).
        async for piece in resp.content.iter_any():
            if to_skip:
                drop = min(to_skip, len(piece))
                to_skip -= drop
                piece = piece[drop:]
                if not piece:
                    continue
            room = stop - cursor.position - pending_len
            if len(piece) > room:
                piece = piece[:room]
            if cursor.peer is None:  # the cap is for the source; peers have their own
                await self._throttle(len(piece))
            pending.append(piece)
            pending_len += len(piece)
            if pending_len >= self._settings.write_block or pending_len == stop - cursor.position:
                await self._flush(transfer, chunk, cursor, pending)
                pending, pending_len = [], 0
                if cursor.position >= stop:
                    break
        if pending:
            await self._flush(transfer, chunk, cursor, pending)
        if cursor.position < stop:
            raise TemporaryError(
                f"{transfer.remote.path}: body ended at byte {cursor.position}, expected {stop}"
            )

    async def _flush(
        self, transfer: FileTransfer, chunk: Chunk, cursor: _Cursor, pieces: list[bytes]
    ) -> None:
        length = sum(len(p) for p in pieces)
        new_position = cursor.position + length
        if cursor.streaming:
            finished = [
                c.index
                for c in transfer.chunks
                if not transfer.done[c.index] and c.end <= new_position
            ]
            cursor.chunk_hash = None  # a stream spans chunks: no chunk digests for this file
        else:
            finished = [chunk.index] if new_position == chunk.end else []
        loop = asyncio.get_running_loop()
        try:
            digest = await loop.run_in_executor(
                self._io, self._write, transfer, chunk, pieces, cursor, finished
            )
        except OSError as e:
            raise disk_error(transfer.path, e) from e
        cursor.position = new_position
        transfer.bytes_written = min(transfer.size, transfer.bytes_written + length)
        self._on_written(transfer, length, cursor.peer is not None)
        if digest is None:
            raise PeerError(
                cursor.peer.node if cursor.peer else "?",
                f"{transfer.remote.path} chunk {chunk.index}: the copy does not match the digest "
                "the peer announced; discarded",
                corrupt=True,
            )
        if finished:
            transfer.mark_done(finished, digest, cursor.peer.node if cursor.peer else None)
            if self._board is not None and digest and len(finished) == 1:
                self._board.add(transfer.index, finished[0], digest)
        elif self._board is not None and cursor.peer is None and not cursor.streaming:
            self._board.fetching(transfer.index, chunk.index, new_position - chunk.start)

    def _write(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        pieces: list[bytes],
        cursor: _Cursor,
        finished: list[int],
    ) -> str | None:
        """Runs on an I/O thread: the bytes first, then their journal records. Answers the
        finished chunk's sha256 ("" when not hashed), or None for a peer copy that does not
        match (not journalled, and undone from the trailing hasher)."""
        offset = cursor.position
        write_at(transfer.fd, transfer.direct_fd, pieces, offset)
        if cursor.chunk_hash is not None:
            for piece in pieces:
                cursor.chunk_hash.update(piece)
        hasher = transfer.hasher
        if hasher is not None:
            # In order: hashed from memory, never read back. A peer's bytes are hashed
            # tentatively, to be undone if the chunk is bad.
            if cursor.peer is not None and offset == chunk.start:
                cursor.checkpoint = hasher.offer_tentatively(offset, pieces)
            else:
                hasher.offer(offset, pieces, hold=cursor.peer is None)
        if not finished:
            return ""
        digest = cursor.chunk_hash.hexdigest() if cursor.chunk_hash is not None else ""
        if cursor.peer is not None and digest != cursor.peer.sha256:
            if hasher is not None and cursor.checkpoint is not None:
                hasher.rewind(cursor.checkpoint)
            return None
        for index in finished:
            self._journal.record(transfer.index, index, digest if len(finished) == 1 else "")
        return digest

    async def _throttle(self, amount: int) -> None:
        if self._limiter is None:
            return
        burst = int(self._limiter.max_rate)
        while amount > 0:
            step = min(amount, burst)
            await self._limiter.acquire(step)
            amount -= step


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/1000"
    if not value or not value.startswith("bytes "):
        return None
    start = value[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


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
