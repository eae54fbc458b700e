"""The origin's side of a chunk, on a fetch thread: one ranged GET received into page-aligned
blocks, each written with O_DIRECT, hashed and journalled before the next is read.

The event loop hears of every written block through `on_block` (progress, finished chunks); the
thread never touches loop state itself. A block that its file's hasher cannot take yet (written
ahead of the hashing frontier) is swapped for a spare one from the pull's `BlockPool`, so the
hasher keeps those bytes without a copy (see `verifying`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from urllib3.response import BaseHTTPResponse

from modelcache.contract.errors import TemporaryError
from modelcache.pulling.blocking_http import TRANSPORT_ERRORS, BlockingClient
from modelcache.pulling.capacity import disk_error
from modelcache.pulling.directio import BlockPool, BodyBlock, write_aligned
from modelcache.pulling.httperrors import error_for_status
from modelcache.pulling.journaling import Journal
from modelcache.pulling.planning import Chunk
from modelcache.pulling.settings import PullSettings
from modelcache.pulling.transfers import FileTransfer
from modelcache.pulling.verifying import HashCheckpoint

log = logging.getLogger(__name__)

_EXPIRED_REDIRECT_STATUSES = {401, 403, 404, 410}
HOLD_WAIT = 0.1
"""Longest wait of a fetch thread for memory to hold a block its hasher cannot take yet: a
file's frontier moves a block every few ms while bytes flow, and a thread that ran far ahead
does better to wait than to have its bytes read back from disk. Short, because a stalled
frontier (a chunk in backoff) must not slow every other connection down for long."""
AUTH_HINT = "check the source's credentials (HF_TOKEN, AWS_*) and that they grant read access"


@dataclass(slots=True)
class Cursor:
    """Where the next body byte of a chunk goes; survives retries of the chunk."""

    position: int
    streaming: bool = False
    """This fetch streams the whole file: the server ignored Range."""
    chunk_hash: hashlib._Hash | None = None
    """sha256 of the chunk's bytes so far (when chunks are hashed)."""
    checkpoint: HashCheckpoint | None = None
    """The trailing hasher's state before a peer's bytes were offered to it."""
    peer: str | None = None
    """The peer the chunk is copied from; None for the origin."""

    def finished_by(self, transfer: FileTransfer, chunk: Chunk, end: int) -> list[int]:
        """The chunks that bytes from `position` up to `end` complete."""
        if not self.streaming:
            return [chunk.index] if end == chunk.end else []
        self.chunk_hash = None  # a stream spans chunks: no chunk digests for this file
        return [
            c.index
            for c in transfer.chunks
            if self.position < c.end <= end and not transfer.done[c.index]
        ]


BlockCallback = Callable[[FileTransfer, Chunk, Cursor, int, int, list[int], str], None]
"""Called on the event loop after each block: (transfer, chunk, cursor, bytes written, where
they end, chunks they finished, the finished chunk's sha256 or ""). The cursor may have moved on
by then: the thread does not wait."""

Throttle = Callable[[int], None]
"""Blocks the calling thread until the bandwidth cap allows this many more bytes."""


class OriginReceiver:
    """Receives chunks from the origin on the calling thread (see module docstring)."""

    def __init__(
        self,
        client: BlockingClient,
        headers: Mapping[str, str],
        settings: PullSettings,
        journal: Journal,
        on_block: BlockCallback,
        loop: asyncio.AbstractEventLoop,
        throttle: Throttle | None,
    ) -> None:
        self._client = client
        self._headers = {**headers, "Accept-Encoding": "identity"}
        self._plain_headers = {"Accept-Encoding": "identity"}
        self._redirects: dict[int, str] = {}
        """File index -> where the source redirected it (Hub LFS files go to a CDN). Asking the
        Hub once per file instead of once per chunk spares its rate limits a request per chunk."""
        self._journal = journal
        self._on_block = on_block
        self._loop = loop
        self._throttle = throttle
        self._block_size = settings.write_block
        self._blocks = BlockPool(settings.write_block, settings.hash_hold // settings.write_block)
        self._takeover = threading.Lock()
        """Serialises taking over a file whose server ignores Range."""
        self._own = threading.local()
        """Each fetch thread's block to receive into (swapped when a hasher keeps it)."""

    def close(self) -> None:
        """After the last `receive` has returned: free the spare blocks, and drop the callbacks,
        which refer back to the fetcher (a cycle would keep this pull's blocks in memory until
        the next garbage collection, which an idle agent may not run for a long time)."""
        self._blocks.clear()
        self._on_block = _ignore_block
        self._throttle = None

    def receive(self, transfer: FileTransfer, chunk: Chunk, cursor: Cursor) -> None:
        """One attempt at the rest of `chunk` (or, if the server ignores Range, the file)."""
        if transfer.streaming and not cursor.streaming:
            return  # another thread streams the whole file, this chunk included
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
        try:
            response = self._client.get(
                url, {**headers, "Range": f"bytes={cursor.position}-{last}"}
            )
            whole = False
            try:
                whole = self._answer(response, redirected, transfer, chunk, cursor, what)
            finally:
                self._client.finish(response, whole=whole)
        except TRANSPORT_ERRORS as e:
            raise TemporaryError(f"{what}: {type(e).__name__}: {e}") from e

    def _answer(
        self,
        response: BaseHTTPResponse,
        redirected: str | None,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        what: str,
    ) -> bool:
        """Take the answer in; True when its whole body was read."""
        status = response.status
        if redirected is None and (final := self._client.redirected_to(response)):
            self._redirects[transfer.index] = final
        if redirected is not None and status in _EXPIRED_REDIRECT_STATUSES:
            # Several threads can meet the same expired target at once.
            self._redirects.pop(transfer.index, None)
            raise TemporaryError(
                f"{what}: redirect target answered HTTP {status} (expired?); "
                "asking the source again",
                retry_after=0,
            )
        if status == 206:
            if content_range_start(response.headers.get("Content-Range")) != cursor.position:
                raise TemporaryError(f"{what}: server answered a different range")
            stop = transfer.size if cursor.streaming else chunk.end
            self._receive_body(response, transfer, chunk, cursor, stop, skip=0)
            return True
        if status == 200:
            # The server ignored Range and sends the whole file. One thread takes the file
            # over and writes it front to back; the others drop their chunks.
            with self._takeover:
                if transfer.streaming and not cursor.streaming:
                    return False
                if not cursor.streaming:
                    transfer.streaming = cursor.streaming = True
                    cursor.position = 0
                    log.info("%s: server ignores Range, streaming whole file", what)
            self._receive_body(response, transfer, chunk, cursor, transfer.size, cursor.position)
            return True
        raise error_for_status(status, response.headers, what=what, auth_hint=AUTH_HINT)

    def _receive_body(
        self,
        response: BaseHTTPResponse,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        stop: int,
        skip: int,
    ) -> None:
        """Write the body from `cursor.position` up to `stop`; the first `skip` body bytes are
        dropped (a retry against a server that cannot resume starts again at offset 0)."""
        block = self._block()
        while skip:
            got = self._client.read_into(response, block.window(0, min(skip, block.capacity)))
            if not got:
                break
            skip -= got
        while cursor.position < stop:
            window = block.window(cursor.position, min(block.capacity, stop - cursor.position))
            got = self._client.read_into(response, window)
            if not got:
                break
            if self._throttle is not None:
                self._throttle(got)
            block = self._write(transfer, chunk, cursor, block, window[:got])
        if cursor.position < stop:
            raise TemporaryError(
                f"{transfer.remote.path}: body ended at byte {cursor.position}, expected {stop}"
            )

    def _write(
        self,
        transfer: FileTransfer,
        chunk: Chunk,
        cursor: Cursor,
        block: BodyBlock,
        data: memoryview,
    ) -> BodyBlock:
        """Write, hash and journal one block; answers the block to receive the next into."""
        offset = cursor.position
        end = offset + len(data)
        finished = cursor.finished_by(transfer, chunk, end)
        try:
            write_aligned(transfer.fd, transfer.direct_fd, data, offset)
        except OSError as e:  # the local disk's, not the connection's: no retry helps
            raise disk_error(transfer.path, e) from e
        if cursor.chunk_hash is not None:
            cursor.chunk_hash.update(data)
        hasher = transfer.hasher
        if hasher is not None and not hasher.offer(offset, [data]):
            spare = self._blocks.swap(wait=HOLD_WAIT)
            if spare is not None:
                # The thread's block becomes the hasher's: never receive into it again.
                hasher.hold(offset, data, functools.partial(self._blocks.give_back, block))
                block = self._own.block = spare
        digest = ""
        if finished:
            digest = cursor.chunk_hash.hexdigest() if cursor.chunk_hash is not None else ""
            try:
                for index in finished:
                    self._journal.record(
                        transfer.index, index, digest if len(finished) == 1 else ""
                    )
            except OSError as e:
                raise disk_error(transfer.path, e) from e
        cursor.position = end
        self._loop.call_soon_threadsafe(
            self._on_block, transfer, chunk, cursor, len(data), end, finished, digest
        )
        return block

    def _block(self) -> BodyBlock:
        block: BodyBlock | None = getattr(self._own, "block", None)
        if block is None:
            block = self._own.block = BodyBlock(self._block_size)
        return block


def content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/1000"
    if not value or not value.startswith("bytes "):
        return None
    start = value[6:].split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _ignore_block(*_: object) -> None:
    """`on_block` of a closed receiver."""
