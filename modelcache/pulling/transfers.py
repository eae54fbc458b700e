"""The state of one file while it is being pulled, shared by the workers and its verifier."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from modelcache.pulling.listing import RemoteFile
from modelcache.pulling.planning import Chunk
from modelcache.pulling.verifying import TrailingHasher


class FileTransfer:
    def __init__(
        self,
        index: int,
        remote: RemoteFile,
        path: Path,
        chunks: list[Chunk],
        finished: Mapping[tuple[int, int], str],
    ) -> None:
        self.index = index
        self.remote = remote
        self.path = path
        self.chunks = chunks
        self.done = [(index, c.index) in finished for c in chunks]
        self.digests = [finished.get((index, c.index), "") for c in chunks]
        """sha256 of each finished chunk, "" when not hashed (what peers check copies against)."""
        self.peer_of: dict[int, str] = {}
        """Chunk index -> the peer it was copied from, for chunks not from the origin."""
        self.origin_only = False
        """No peer copies for this file: it has no digest from the source, or it failed its
        digest with peer chunks in it."""
        self.fd = -1
        self.direct_fd = -1
        """The same file opened with O_DIRECT, or -1 (see `directio`)."""
        self.reused = False
        """Linked from the published model (see `reusing`): nothing to fetch, nothing to hash."""
        self.streaming = False
        """True once a worker streams the whole file because the server ignored Range."""
        self.hasher: TrailingHasher | None = None
        """This download attempt's hasher; the writer feeds it in-order blocks."""
        self.changed = asyncio.Event()
        """Set whenever a chunk finishes: wakes the file's verifier."""
        self.bytes_written = sum(c.length for c, d in zip(chunks, self.done, strict=True) if d)

    @property
    def size(self) -> int:
        return self.remote.size

    @property
    def complete(self) -> bool:
        return all(self.done)

    def contiguous_end(self) -> int:
        """Offset up to which every byte is on disk: what the trailing hasher may read."""
        for chunk, done in zip(self.chunks, self.done, strict=True):
            if not done:
                return chunk.start
        return self.size

    def mark_done(self, indexes: list[int], digest: str = "", peer: str | None = None) -> None:
        """`digest` and `peer` belong to a single finished chunk."""
        for i in indexes:
            self.done[i] = True
            self.digests[i] = digest
            if peer is not None:
                self.peer_of[i] = peer
        self.changed.set()

    def mark_reused(self) -> None:
        """The file is a link to the identical, already verified file of the published model."""
        self.done = [True] * len(self.chunks)
        self.bytes_written = self.size
        self.reused = True

    def reset(self) -> None:
        """Forget every chunk: the file failed verification and will be fetched again."""
        self.done = [False] * len(self.chunks)
        self.digests = [""] * len(self.chunks)
        self.peer_of.clear()
        self.streaming = False
        self.bytes_written = 0
