"""What this node holds of one model, as its peers see it: verified chunks and where they are.

A running pull keeps its board current (every journalled chunk with its sha256, the chunks it is
fetching from the origin); a published model gets a complete board from its manifest. The agent
serves peers from boards only: a byte range is served when every chunk it touches is on the board.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.peer_wire import ChunkMap, ChunkRecord
from modelcache.pulling.manifests import Manifest, read_manifest
from modelcache.pulling.planning import plan_chunks
from modelcache.pulling.staging import StagingPaths


@dataclass(frozen=True, slots=True)
class BoardFile:
    path: str
    """Repo-relative path."""
    size: int


class ChunkBoard:
    """One model's chunk map on this node. Lives on the event loop; read by the peer server."""

    def __init__(self) -> None:
        self.fingerprint = ""
        self.chunk_size = 0
        self.files: tuple[BoardFile, ...] = ()
        self.root: Path | None = None
        """The folder the files are read from: staging while pulling, the model once published."""
        self.complete = False
        self.closed = False
        """The pull stopped or the model went away: nothing more is served from this board."""
        self._records: list[ChunkRecord] = []
        self._held: set[tuple[int, int]] = set()
        self._starts: list[list[int]] = []
        """Per file, the start offset of each chunk (bisect finds a byte's chunk)."""
        self.inflight: dict[tuple[int, int], int] = {}
        """(file, chunk) -> bytes fetched from the origin so far, for chunks being fetched."""
        self._change = asyncio.Event()

    @property
    def ready(self) -> bool:
        return bool(self.fingerprint) and not self.closed

    def start(
        self, fingerprint: str, chunk_size: int, files: Sequence[BoardFile], root: Path
    ) -> None:
        """Called once the pull has listed the source and planned its chunks."""
        self.fingerprint, self.chunk_size, self.root = fingerprint, chunk_size, root
        self.files = tuple(files)
        plan = plan_chunks([f.size for f in self.files], chunk_size)
        self._starts = [[c.start for c in chunks] for chunks in plan]
        self._records.clear()
        self._held.clear()
        self.inflight.clear()
        self.complete = self.closed = False
        self._notify()

    def add(self, file_index: int, chunk_index: int, sha256: str) -> None:
        key = (file_index, chunk_index)
        self.inflight.pop(key, None)
        if key in self._held:
            return
        self._held.add(key)
        self._records.append(ChunkRecord(file_index, chunk_index, sha256))
        self._notify()

    def forget_file(self, file_index: int) -> None:
        """The file failed its whole-file digest: none of its chunks is served any more."""
        self._held = {k for k in self._held if k[0] != file_index}
        self._records = [r for r in self._records if r.file_index != file_index]
        # Positions in the log moved: peers polling from an old position re-read from 0.
        self._notify()

    def fetching(self, file_index: int, chunk_index: int, done: int) -> None:
        key = (file_index, chunk_index)
        started = key not in self.inflight
        self.inflight[key] = done
        if started:  # peers learn at once that this chunk is taken
            self._notify()

    def not_fetching(self, file_index: int, chunk_index: int) -> None:
        self.inflight.pop((file_index, chunk_index), None)

    def published(self, root: Path) -> None:
        self.root = root
        self.complete = True
        self.inflight.clear()
        self._notify()

    def close(self) -> None:
        self.closed = True
        self.inflight.clear()
        self._notify()

    def holds(self, file_index: int, start: int, end: int) -> bool:
        """Whether bytes [start, end) of the file are all in held chunks."""
        if not self.ready or not 0 <= file_index < len(self.files):
            return False
        if not 0 <= start < end <= self.files[file_index].size:
            return False
        starts = self._starts[file_index]
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_right(starts, end - 1) - 1
        return all((file_index, c) in self._held for c in range(first, last + 1))

    def path_of(self, file_index: int) -> Path:
        assert self.root is not None
        return self.root / self.files[file_index].path

    def snapshot(self, position: int) -> ChunkMap:
        """Records from `position` on (from 0 when the log shrank under the caller)."""
        if position > len(self._records):
            position = 0
        return ChunkMap(
            fingerprint=self.fingerprint,
            chunk_size=self.chunk_size,
            complete=self.complete,
            next=len(self._records),
            records=tuple(self._records[position:]),
            inflight=dict(self.inflight),
        )

    async def wait_past(self, position: int) -> None:
        """Returns when the log has records past `position` or at the next change (a record,
        a chunk started from the origin, completion, close); callers bound the wait with
        `asyncio.timeout`."""
        if len(self._records) != position or self.complete or self.closed:
            return
        await self._change.wait()

    def _notify(self) -> None:
        # One event per change: waiters hold the one they started on; a new one for the next.
        self._change.set()
        self._change = asyncio.Event()


def board_for_published(dest: Path) -> ChunkBoard | None:
    """A complete board for a published model whose manifest kept its chunk digests (blocking;
    the new board has no waiters, so a worker thread may build it)."""
    manifest = read_manifest(StagingPaths(dest).manifest)
    board = ChunkBoard()
    return board if manifest is not None and fill_published(board, manifest, dest) else None


def fill_published(board: ChunkBoard, manifest: Manifest, dest: Path) -> bool:
    """Fill `board` from the manifest of the model published at `dest`; False when the
    manifest kept no chunk digests (a model pulled without a board)."""
    if not manifest.chunk_size:
        return False
    files = [BoardFile(f.path, f.size) for f in manifest.files]
    board.start(manifest.fingerprint, manifest.chunk_size, files, dest)
    plan = plan_chunks([f.size for f in files], manifest.chunk_size)
    for file_index, (entry, chunks) in enumerate(zip(manifest.files, plan, strict=True)):
        if len(entry.chunk_digests) != len(chunks):
            continue  # this file's chunks were not all hashed: peers fetch it elsewhere
        for chunk, digest in zip(chunks, entry.chunk_digests, strict=True):
            board.add(file_index, chunk.index, digest)
    board.published(dest)
    return True
