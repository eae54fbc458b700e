"""Digests: computed while the download is still running, and re-checked on published models.

A file's chunks finish out of order, but the hasher only needs a contiguous prefix: it trails the
download frontier, hashing blocks from memory as they are written (those written ahead of it are
held while the pull has memory for them) and reading back only what it could not hold, so the
sha256 of a multi-GB file is ready moments after its last byte lands instead of a full re-read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelcache.pulling.directio import read_at
from modelcache.pulling.listing import Digest
from modelcache.pulling.manifests import Manifest

READ_BLOCK = 4 << 20


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> _Hash: ...


@dataclass(frozen=True, slots=True)
class HashCheckpoint:
    state: _Hash
    offset: int


_ACCEPTED = HashCheckpoint(hashlib.sha256(), -1)
"""What `_offer` answers when it hashed the block and no checkpoint was asked for."""


def new_hash(digest: Digest, size: int) -> _Hash:
    if digest.algorithm == "sha256":
        return hashlib.sha256()
    if digest.algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    git = hashlib.sha1(usedforsecurity=False)
    git.update(b"blob %d\0" % size)
    return git


class TrailingHasher:
    """Hashes a file from offset 0 up to wherever the download has filled it contiguously.

    Bytes come three ways, cheapest first: the writer `offer`s a block it has just written, which
    is hashed at once if it starts exactly where hashing stands; a block further on may be given
    to `hold`, and is hashed when the frontier reaches it; whatever was not held is read back by
    the verifier's `advance_to`. All of it blocks: call it on a thread. The writer only ever
    try-locks the hash, so a read-back never holds up a write.
    """

    def __init__(self, digest: Digest, size: int) -> None:
        self.expected = digest
        self._size = size
        self._hash = new_hash(digest, size)
        self._lock = threading.Lock()
        """Guards the hash and `offset`; held across a read-back."""
        self.offset = 0
        self._held: dict[int, tuple[memoryview, Callable[[], None]]] = {}
        """Start offset -> (bytes, release) of blocks written ahead of `offset`."""
        self._held_lock = threading.Lock()
        """Guards `_held` alone, never across I/O or hashing."""
        self.read_back = 0
        """Bytes hashed by reading them back from disk rather than from memory."""

    def offer(self, offset: int, pieces: Sequence[bytes | memoryview]) -> bool:
        """Hash `pieces` (written at `offset`) if they continue the hashed prefix. True when
        hashed; otherwise they are the caller's to `hold` or forget."""
        return self._offer(offset, pieces, save=False) is not None

    def hold(self, offset: int, data: memoryview, release: Callable[[], None]) -> None:
        """Keep `data` (written at `offset`, ahead of the frontier) until the frontier reaches
        it. `release` is called once the memory is free again: when it is hashed, dropped, or
        at once when the frontier has passed it already."""
        if offset < self.offset:
            release()
            return
        with self._held_lock:
            replaced = self._held.pop(offset, None)
            self._held[offset] = (data, release)
        if replaced is not None:  # the same range written again: the older copy is stale
            replaced[1]()
        # The frontier may have reached `offset` while this block was on its way in.
        if offset == self.offset and self._lock.acquire(blocking=False):
            try:
                self._hash_held()
            finally:
                self._lock.release()

    def offer_tentatively(
        self, offset: int, pieces: Sequence[bytes | memoryview]
    ) -> HashCheckpoint | None:
        """`offer` the first block of a chunk not verified yet (a peer's copy); the checkpoint
        returned (None when not hashed) lets `rewind` undo it and what followed if the chunk
        turns out bad. Only a chunk's first block can continue the prefix: until the chunk is
        done, the read-back stops at its start. Such blocks are never held: a bad chunk is
        written again, and held bytes would outlive the rewrite."""
        return self._offer(offset, pieces, save=True)

    def rewind(self, checkpoint: HashCheckpoint) -> None:
        """Back to `checkpoint`; bytes after it are read back from disk once rewritten."""
        with self._lock:
            if self.offset > checkpoint.offset:
                self._hash, self.offset = checkpoint.state.copy(), checkpoint.offset

    def release(self) -> None:
        """Drop every held block (the file is fetched again, or the pull ends)."""
        self._drop(lambda start, length: True)

    @property
    def held_bytes(self) -> int:
        with self._held_lock:
            return sum(len(data) for data, _ in self._held.values())

    def _offer(
        self, offset: int, pieces: Sequence[bytes | memoryview], *, save: bool
    ) -> HashCheckpoint | None:
        if self._held:  # new bytes over a held block's range (a rewrite) make that copy stale
            end = offset + sum(len(p) for p in pieces)
            self._drop(lambda start, length: start < end and offset < start + length)
        if offset != self.offset or not self._lock.acquire(blocking=False):
            return None
        try:
            if offset != self.offset:
                return None
            checkpoint = HashCheckpoint(self._hash.copy(), offset) if save else _ACCEPTED
            for piece in pieces:
                self._hash.update(piece)
                self.offset += len(piece)
            if not save:  # a tentative block must be checked before anything is built on it
                self._hash_held()
            return checkpoint
        finally:
            self._lock.release()

    def _drop(self, stale: Callable[[int, int], bool]) -> None:
        """Drop the held blocks for which `stale(start, length)` holds, releasing them."""
        with self._held_lock:
            starts = [start for start, (data, _) in self._held.items() if stale(start, len(data))]
            dropped = [self._held.pop(start)[1] for start in starts]
        for release in dropped:
            release()

    def _hash_held(self) -> None:
        """With `_lock` held: hash held blocks for as long as they continue the prefix."""
        while True:
            with self._held_lock:
                found = self._held.pop(self.offset, None)
            if found is None:
                return
            data, release = found
            self._hash.update(data)
            self.offset += len(data)
            release()

    def _next_held(self) -> int | None:
        """Where the first held block ahead starts; blocks the hashing has passed (it never
        should) are dropped so that they cannot pin memory."""
        self._drop(lambda start, length: start < self.offset)
        with self._held_lock:
            return min(self._held, default=None)

    def advance_to(self, fd: int, end: int, direct_fd: int = -1) -> None:
        """Hash up to `end` (every byte before it is on disk): held blocks from memory, the rest
        read back; then any held blocks that continue the prefix beyond `end`."""
        while True:
            with self._lock:
                self._hash_held()
                if self.offset >= end:
                    return
                length = min(READ_BLOCK, end - self.offset)
                next_held = self._next_held()
                if next_held is not None:
                    length = min(length, next_held - self.offset)
                block = read_at(fd, direct_fd, self.offset, length)
                if not block:
                    raise OSError(f"unexpected end of staged file at offset {self.offset}")
                self._hash.update(block)
                self.offset += len(block)
                self.read_back += len(block)

    def matches(self) -> bool:
        return self._hash.hexdigest() == self.expected.hex.lower()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def hash_file(path: Path, digest: Digest, size: int) -> str:
    """Full digest of a file on disk (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = TrailingHasher(digest, size)
        hasher.advance_to(fd, size)
        if os.pread(fd, 1, size):
            return "size-mismatch"
        return hasher.hexdigest()
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    path: str
    reason: str
    content_differs: bool = False
    """Right size, wrong bytes: only a digest shows it, so a re-pull must not trust the file."""


def check_published(
    dest: Path, manifest: Manifest, *, digests: bool, hash_changed: bool = False
) -> list[VerifyProblem]:
    """What is wrong with a published model compared to its manifest (blocking; use a thread).

    Sizes always; digests when asked (that re-reads every byte). With `hash_changed`, a file
    modified after the model was published is hashed too: an edit that keeps the size shows in
    its mtime, so a cheap periodic check still catches it. Extra files count as a problem: the
    folder must hold exactly the repo's files.
    """
    problems: list[VerifyProblem] = []
    expected = {f.path: f for f in manifest.files}
    published_at = manifest.finished_at.timestamp()
    for f in manifest.files:
        path = dest / f.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            problems.append(VerifyProblem(f.path, "missing"))
            continue
        size = stat.st_size
        touched = hash_changed and stat.st_mtime > published_at
        if size != f.size:
            problems.append(VerifyProblem(f.path, f"size {size}, expected {f.size}"))
        elif (digests or touched) and f.digest is not None:
            actual = hash_file(path, f.digest, f.size)
            if actual != f.digest.hex.lower():
                reason = f"{f.digest.algorithm} {actual} differs"
                problems.append(VerifyProblem(f.path, reason, content_differs=True))
    if dest.is_dir():
        for dirpath, _dirs, files in os.walk(dest):
            for name in files:
                rel = Path(dirpath, name).relative_to(dest).as_posix()
                if rel not in expected:
                    problems.append(VerifyProblem(rel, "not part of the model"))
    else:
        problems.append(VerifyProblem(".", f"{dest} is not a directory"))
    return problems
