"""O_DIRECT writes and reads against a real file: any offset, any piece sizes, same bytes."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcache.pulling.directio import ALIGN, open_direct, read_at, write_at

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


def test_direct_descriptor_is_used_where_the_filesystem_allows_it(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    fd = open_direct(path)
    if fd >= 0:  # ext4/xfs; tmpfs answers -1 and the buffered path is taken
        flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        assert flags & os.O_DIRECT
        os.close(fd)
