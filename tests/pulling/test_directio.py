"""O_DIRECT writes and reads against a real file: any offset, any piece sizes, same bytes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcache.pulling.directio import (
    ALIGN,
    STARVED_PAUSE,
    BlockPool,
    BodyBlock,
    open_direct,
    read_at,
    write_aligned,
    write_at,
)

SIZE = 1 << 20


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offset=st.integers(min_value=0, max_value=SIZE // 2),
    sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
)
def test_write_at_puts_every_byte_where_asked(
    tmp_path: Path, offset: int, sizes: list[int]
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * SIZE)
    pieces = [os.urandom(n) for n in sizes]
    fd = os.open(path, os.O_RDWR)
    direct = open_direct(path)
    try:
        write_at(fd, direct, pieces, offset)
        os.fsync(fd)
        expected = bytearray(SIZE)
        data = b"".join(pieces)
        expected[offset : offset + len(data)] = data
        assert path.read_bytes()[:SIZE] == bytes(expected[:SIZE])
        # Read back through both paths, aligned and not.
        aligned = offset - offset % ALIGN
        got = bytes(read_at(fd, direct, aligned, offset - aligned + len(data)))
        assert got == bytes(expected[aligned : offset + len(data)])
        assert bytes(read_at(fd, direct, offset, len(data))) == data
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offset=st.integers(min_value=0, max_value=SIZE // 2),
    length=st.integers(min_value=1, max_value=3 * ALIGN + 100),
)
def test_a_block_received_at_any_offset_is_written_as_it_lies(
    tmp_path: Path, offset: int, length: int
) -> None:
    """What a fetch thread does: receive into a block's window for the file offset, write it
    with no copy (O_DIRECT for its aligned middle)."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * SIZE)
    block = BodyBlock(3 * ALIGN + 100)
    window = block.window(offset, length)
    data = os.urandom(length)
    window[:] = data
    fd = os.open(path, os.O_RDWR)
    direct = open_direct(path)
    try:
        write_aligned(fd, direct, window, offset)
    finally:
        os.close(fd)
        if direct >= 0:
            os.close(direct)
    assert path.read_bytes()[offset : offset + length] == data


def test_direct_descriptor_is_used_where_the_filesystem_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    fd = open_direct(path)
    if fd >= 0:  # ext4/xfs; tmpfs answers -1 and the buffered path is taken
        flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        assert flags & os.O_DIRECT
        os.close(fd)


def test_a_block_given_back_wakes_a_thread_waiting_for_one() -> None:
    pool = BlockPool(ALIGN, limit=1)
    held = pool.swap()
    assert held is not None
    assert pool.swap() is None  # all out, and no wait asked for
    giving_back = threading.Timer(0.1, pool.give_back, [held])
    giving_back.start()
    try:
        assert pool.swap(wait=10.0) is held  # the same memory, reused
    finally:
        giving_back.join()
    assert pool.out == 1


def test_after_a_wait_runs_out_nobody_waits_for_a_while() -> None:
    """A pool too small for the pull must cost read-backs, not a wait for every block."""
    pool = BlockPool(ALIGN, limit=1)
    assert pool.swap() is not None
    started = time.monotonic()
    assert pool.swap(wait=0.2) is None
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert pool.swap(wait=10.0) is None
    assert time.monotonic() - started < STARVED_PAUSE
