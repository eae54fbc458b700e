"""The trailing hasher: blocks offered in order are hashed from memory, the rest read back."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from modelcache.pulling.directio import open_direct
from modelcache.pulling.listing import Digest
from modelcache.pulling.verifying import HoldBudget, TrailingHasher, hash_file


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


def test_blocks_written_ahead_are_held_and_hashed_from_memory(tmp_path: Path) -> None:
    data, path, digest = _staged(tmp_path, 8 * 65536)
    budget = HoldBudget(1 << 20)
    hasher = TrailingHasher(digest, len(data), budget)
    blocks = _blocks(data, 65536)
    # Four "connections": every block but the first arrives before the one in front of it.
    for start, block in reversed(blocks[1:]):
        assert not hasher.offer(start, [block])
    assert budget.used == len(data) - 65536
    assert hasher.offer(0, [blocks[0][1]])  # the frontier arrives: everything held follows it
    assert hasher.offset == len(data)
    assert budget.used == 0
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher.advance_to(fd, len(data))
    finally:
        os.close(fd)
    assert hasher.read_back == 0
    assert hasher.matches()


def test_what_the_budget_cannot_hold_is_read_back(tmp_path: Path) -> None:
    data, path, digest = _staged(tmp_path, 8 * 65536)
    budget = HoldBudget(3 * 65536)
    hasher = TrailingHasher(digest, len(data), budget)
    for start, block in _blocks(data, 65536)[1:]:
        hasher.offer(start, [block])  # blocks 1-3 fit, 4-7 do not
    assert budget.used == 3 * 65536
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher.advance_to(fd, len(data))
    finally:
        os.close(fd)
    assert hasher.read_back == 65536 + 4 * 65536  # block 0 and the four not held
    assert budget.used == 0
    assert hasher.matches()


def test_a_rewrite_replaces_the_held_copy(tmp_path: Path) -> None:
    data, _, digest = _staged(tmp_path, 4 * 65536)
    budget = HoldBudget(1 << 20)
    hasher = TrailingHasher(digest, len(data), budget)
    hasher.offer(65536, [os.urandom(2 * 65536)])  # bad bytes, held
    hasher.offer(65536, [data[65536 : 3 * 65536]])  # written again (a retry): the good ones
    assert budget.used == 2 * 65536
    hasher.offer(3 * 65536, [data[3 * 65536 :]])
    hasher.offer(0, [data[:65536]])
    assert hasher.offset == len(data)
    assert hasher.matches()


def test_release_gives_the_budget_back(tmp_path: Path) -> None:
    data, _, digest = _staged(tmp_path, 4 * 65536)
    budget = HoldBudget(1 << 20)
    hasher = TrailingHasher(digest, len(data), budget)
    hasher.offer(65536, [data[65536 : 2 * 65536]])
    assert not hasher.offer(3 * 65536, [data[3 * 65536 :]], hold=False)  # a peer's: not held
    assert budget.used == 65536
    hasher.release()
    assert budget.used == 0
    assert hasher.held_bytes == 0
