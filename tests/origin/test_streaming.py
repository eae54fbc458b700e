"""Range parsing, checked against Python slicing for every shape of header."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcache.origin.streaming import ByteRange, RangeNotSatisfiableError, parse_range

sizes = st.integers(min_value=0, max_value=10_000)
offsets = st.integers(min_value=0, max_value=12_000)


@given(size=sizes, start=offsets, end=offsets)
def test_start_end_ranges_slice_like_python(size: int, start: int, end: int) -> None:
    header = f"bytes={start}-{end}"
    if end < start:
        assert parse_range(header, size) is None  # malformed: ignored
    elif start >= size:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(header, size)
    else:
        got = parse_range(header, size)
        assert got is not None
        assert range(size)[got.start : got.end + 1] == range(size)[start : end + 1]


@given(size=sizes, start=offsets)
def test_open_ranges_run_to_the_end(size: int, start: int) -> None:
    if start >= size:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(f"bytes={start}-", size)
    else:
        assert parse_range(f"bytes={start}-", size) == ByteRange(start, size - 1)


@given(size=sizes, suffix=offsets)
def test_suffix_ranges_take_the_tail(size: int, suffix: int) -> None:
    if suffix == 0 or size == 0:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(f"bytes=-{suffix}", size)
    else:
        got = parse_range(f"bytes=-{suffix}", size)
        assert got is not None
        assert range(size)[got.start : got.end + 1] == range(size)[-suffix:]


@pytest.mark.parametrize("header", [None, "", "bytes=", "bytes=-", "bytes=1-2,4-5", "items=0-1"])
def test_other_headers_mean_the_whole_file(header: str | None) -> None:
    assert parse_range(header, 100) is None
