"""The trailing hasher: blocks offered in order are hashed from memory, the rest read back."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from modelcache.pulling.directio import BlockPool, BodyBlock, open_direct
from modelcache.pulling.listing import Digest
from modelcache.pulling.verifying import TrailingHasher, hash_file


def test_offers_and_read_backs_combine_into_the_file_digest(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    hasher = TrailingHasher(digest, len(data))
    fd, direct = os.open(path, os.O_RDONLY), open_direct(path)
    try:
        assert hasher.offer(0, [data[:1000], data[1000:65536]])  # in order: taken
        assert not hasher.offer(200_000, [data[200_000:300_000]])  # a gap: refused
        assert hasher.offset == 65536
        hasher.advance_to(fd, 1_048_576, direct)  # read back the gap and more
        assert hasher.offer(1_048_576, [data[1_048_576:2_000_000]])
        assert not hasher.offer(0, [data[:10]])  # already hashed: refused
        hasher.advance_to(fd, len(data), direct)
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)
    assert hasher.offset == len(data)
    assert hasher.matches()


def test_git_blob_and_md5_digests(tmp_path: Path) -> None:
    data = b'{"architectures": ["LlamaForCausalLM"]}'
    path = tmp_path / "config.json"
    path.write_bytes(data)
    git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert hash_file(path, Digest("git-sha1", git), len(data)) == git
    md5 = hashlib.md5(data).hexdigest()
    assert hash_file(path, Digest("md5", md5), len(data)) == md5
    assert hash_file(path, Digest("md5", md5), len(data) - 1) == "size-mismatch"


def _staged(tmp_path: Path, size: int) -> tuple[bytes, Path, Digest]:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return data, path, Digest("sha256", hashlib.sha256(data).hexdigest())


def _blocks(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(start, data[start : start + size]) for start in range(0, len(data), size)]


def _hash_the_rest(hasher: TrailingHasher, path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher.advance_to(fd, size)
    finally:
        os.close(fd)


class _Writer:
    """What a fetch thread does with a block it wrote: offer it, and if the hasher cannot take
    it yet, hand it over in exchange for a spare from the pool (when the pool has one)."""

    def __init__(self, hasher: TrailingHasher, pool: BlockPool) -> None:
        self.hasher = hasher
        self.pool = pool
        self.block = BodyBlock(pool.block_size)

    def write(self, offset: int, data: bytes) -> bool:
        """True when the block was hashed at once."""
        window = self.block.window(offset, len(data))
        window[:] = data
        if self.hasher.offer(offset, [window]):
            return True
        spare = self.pool.swap()
        if spare is not None:
            self.hasher.hold(offset, window, functools.partial(self.pool.give_back, self.block))
            self.block = spare
        return False


def test_blocks_written_ahead_are_held_and_hashed_from_memory(tmp_path: Path) -> None:
    data, path, digest = _staged(tmp_path, 8 * 65536)
    pool = BlockPool(65536, limit=16)
    hasher = TrailingHasher(digest, len(data))
    writer = _Writer(hasher, pool)
    blocks = _blocks(data, 65536)
    # Four "connections": every block but the first arrives before the one in front of it.
    for start, block in reversed(blocks[1:]):
        assert not writer.write(start, block)
    assert hasher.held_bytes == len(data) - 65536
    assert pool.out == 7
    assert writer.write(0, blocks[0][1])  # the frontier arrives: everything held follows it
    assert hasher.offset == len(data)
    assert pool.out == 0
    _hash_the_rest(hasher, path, len(data))
    assert hasher.read_back == 0
    assert hasher.matches()


def test_what_the_pool_cannot_hold_is_read_back(tmp_path: Path) -> None:
    data, path, digest = _staged(tmp_path, 8 * 65536)
    pool = BlockPool(65536, limit=3)
    hasher = TrailingHasher(digest, len(data))
    writer = _Writer(hasher, pool)
    for start, block in _blocks(data, 65536)[1:]:
        writer.write(start, block)  # blocks 1-3 are held, 4-7 not
    assert hasher.held_bytes == 3 * 65536
    _hash_the_rest(hasher, path, len(data))
    assert hasher.read_back == 65536 + 4 * 65536  # block 0 and the four not held
    assert pool.out == 0
    assert hasher.matches()


def test_a_held_block_is_never_written_into_again(tmp_path: Path) -> None:
    """The writer receives the next block into a spare, never into memory the hasher keeps."""
    data, _, digest = _staged(tmp_path, 4 * 65536)
    pool = BlockPool(65536, limit=4)
    hasher = TrailingHasher(digest, len(data))
    writer = _Writer(hasher, pool)
    for start, block in reversed(_blocks(data, 65536)[1:]):
        writer.write(start, block)  # the same writer, three blocks ahead: three swaps
    assert writer.write(0, data[:65536])
    assert hasher.matches()


def test_a_rewrite_replaces_the_held_copy(tmp_path: Path) -> None:
    data, _, digest = _staged(tmp_path, 4 * 65536)
    pool = BlockPool(2 * 65536, limit=4)
    hasher = TrailingHasher(digest, len(data))
    writer = _Writer(hasher, pool)
    writer.write(65536, os.urandom(2 * 65536))  # bad bytes, held
    writer.write(65536, data[65536 : 3 * 65536])  # written again (a retry): the good ones
    assert hasher.held_bytes == 2 * 65536
    assert pool.out == 1  # the stale copy went back to the pool
    writer.write(3 * 65536, data[3 * 65536 :])
    writer.write(0, data[:65536])
    assert hasher.offset == len(data)
    assert hasher.matches()


def test_release_gives_every_held_block_back(tmp_path: Path) -> None:
    data, _, digest = _staged(tmp_path, 4 * 65536)
    pool = BlockPool(65536, limit=4)
    hasher = TrailingHasher(digest, len(data))
    writer = _Writer(hasher, pool)
    writer.write(65536, data[65536 : 2 * 65536])
    assert not hasher.offer(3 * 65536, [data[3 * 65536 :]])  # offered only: not held
    assert pool.out == 1
    hasher.release()
    assert pool.out == 0
    assert hasher.held_bytes == 0


def test_a_block_the_frontier_has_passed_is_released_at_once(tmp_path: Path) -> None:
    data, _, digest = _staged(tmp_path, 2 * 65536)
    hasher = TrailingHasher(digest, len(data))
    assert hasher.offer(0, [data[:65536]])
    released: list[int] = []
    hasher.hold(0, memoryview(data[:65536]), lambda: released.append(0))
    assert released == [0]
    assert hasher.held_bytes == 0


def test_a_block_held_again_at_the_same_offset_releases_the_older_one(tmp_path: Path) -> None:
    """Two writes of one range racing to be held: the older copy goes back, never leaks."""
    data, _, digest = _staged(tmp_path, 2 * 65536)
    hasher = TrailingHasher(digest, len(data))
    released: list[str] = []
    hasher.hold(65536, memoryview(data[65536:]), lambda: released.append("first"))
    hasher.hold(65536, memoryview(data[65536:]), lambda: released.append("second"))
    assert released == ["first"]
    assert hasher.held_bytes == 65536
    assert hasher.offer(0, [data[:65536]])
    assert released == ["first", "second"]
    assert hasher.matches()
