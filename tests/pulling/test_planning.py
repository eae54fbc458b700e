from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from modelcache.pulling.planning import in_fetch_order, plan_chunks

sizes = st.lists(st.integers(min_value=0, max_value=10**9), max_size=8)
chunk_sizes = st.integers(min_value=64 * 1024, max_value=256 * 2**20)


@given(sizes, chunk_sizes)
def test_chunks_tile_every_file_exactly(file_sizes: list[int], chunk_size: int) -> None:
    plan = plan_chunks(file_sizes, chunk_size)
    assert len(plan) == len(file_sizes)
    for file_index, (size, chunks) in enumerate(zip(file_sizes, plan, strict=True)):
        if size == 0:
            assert chunks == []
            continue
        assert chunks[0].start == 0
        assert chunks[-1].end == size
        for a, b in itertools.pairwise(chunks):
            assert a.end == b.start
        for i, c in enumerate(chunks):
            assert c.file_index == file_index
            assert c.index == i
            assert 0 < c.length < chunk_size + chunk_size // 4


@given(sizes, chunk_sizes)
def test_no_sliver_chunks_and_fetch_order_is_round_robin_over_files(
    file_sizes: list[int], chunk_size: int
) -> None:
    plan = plan_chunks(file_sizes, chunk_size)
    for chunks in plan:
        if len(chunks) > 1:
            assert chunks[-1].length >= chunk_size // 4
    order = in_fetch_order(plan)
    assert sorted(order, key=lambda c: (c.file_index, c.index)) == [c for f in plan for c in f]
    # Within a file, offsets ascend; across files, chunk k of every file precedes chunk k + 1.
    assert [c.index for c in order] == sorted(c.index for c in order)
    for f in range(len(plan)):
        mine = [c.start for c in order if c.file_index == f]
        assert mine == sorted(mine)
