"""Chunks copied from peers of the node group (see `peering`): one ranged GET each, never
retried here. Nothing is journalled unless the whole chunk matches the sha256 the peer announced;
otherwise the bytes are left unclaimed (fetched again elsewhere) and the peer blamed.

Only pulls that have peers import this module, and with it aiohttp's client: a plain
`modelcache pull` starts without it.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from modelcache.contract.errors import TemporaryError
from modelcache.pulling.capacity import disk_error
from modelcache.pulling.directio import write_at
from modelcache.pulling.fetching import ChunkAccounting, PeerChunk
from modelcache.pulling.journaling import Journal
from modelcache.pulling.peering.errors import PeerError
from modelcache.pulling.planning import Chunk
from modelcache.pulling.receiving import Cursor, content_range_start
from modelcache.pulling.settings import PullSettings
from modelcache.pulling.transfers import FileTransfer


def open_peer_session(settings: PullSettings) -> aiohttp.ClientSession:
    """The pool for peer traffic (chunk-map long polls and chunk copies); origin chunks go
    through the fetch threads' own connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, limit_per_host=settings.peers_per_chunk_request + 1
        ),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.peer_stall_timeout),
        auto_decompress=False,
        read_bufsize=256 * 1024,
        headers={"User-Agent": "modelcache"},
    )


class PeerCopier:
    """Copies chunks from peers into a pull's staging files (writes on the `io` threads)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: PullSettings,
        journal: Journal,
        io: ThreadPoolExecutor,
        account: ChunkAccounting,
    ) -> None:
        self._session = session
        self._settings = settings
        self._journal = journal
        self._io = io
        self._account = account

    async def copy(self, transfer: FileTransfer, chunk: Chunk, peer: PeerChunk) -> None:
        """Copy one chunk from a peer, once: any failure is a `PeerError` for the caller to
        take elsewhere. Nothing is journalled unless the whole chunk matches `peer.sha256`."""
        cursor = Cursor(position=chunk.start, chunk_hash=hashlib.sha256(), peer=peer.node)
        what = f"{transfer.remote.path} chunk {chunk.index} from peer {peer.node}"
        headers = {"Range": f"bytes={chunk.start}-{chunk.end - 1}", "Accept-Encoding": "identity"}
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
        try:
            async with self._session.get(
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
            digest = await asyncio.get_running_loop().run_in_executor(
                self._io, self._write_peer_copy, transfer, chunk, pieces, cursor, peer, finished
            )
        except OSError as e:
            raise disk_error(transfer.path, e) from e
        cursor.position += length
        if digest is None:
            self._account(transfer, chunk, cursor, length, cursor.position, [], "")
            raise PeerError(
                peer.node,
                f"{transfer.remote.path} chunk {chunk.index}: the copy does not match the digest "
                "the peer announced; discarded",
                corrupt=True,
            )
        self._account(transfer, chunk, cursor, length, cursor.position, finished, digest)

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


def _peer_timeout(settings: PullSettings, chunk: Chunk) -> aiohttp.ClientTimeout:
    """A peer that stalls or crawls loses the chunk to another source: at least
    `peer_min_rate` bytes per second, whatever the chunk size."""
    total = max(settings.peer_stall_timeout, chunk.length / settings.peer_min_rate)
    return aiohttp.ClientTimeout(
        total=total, sock_connect=settings.peer_stall_timeout, sock_read=settings.peer_stall_timeout
    )
