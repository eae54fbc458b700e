"""The trailing hasher: blocks offered in order are hashed from memory, the rest read back."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from modelcache.pulling.directio import open_direct
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
