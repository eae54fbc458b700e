"""Cut files into byte-range chunks: the unit of a request, a retry and a journal record."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    file_index: int
    index: int
    """Position of the chunk within its file; (file_index, index) is the journal key."""
    start: int
    end: int
    """Exclusive end offset."""

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_chunks(sizes: Sequence[int], chunk_size: int) -> list[list[Chunk]]:
    """Chunks of every file, in file order; an empty file has none.

    The last chunk of a file absorbs a tail shorter than a quarter chunk, so no request is
    spent on a sliver.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    plan: list[list[Chunk]] = []
    for file_index, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"negative file size {size}")
        bounds = [*list(range(0, size, chunk_size)), size]
        if len(bounds) > 2 and size - bounds[-2] < chunk_size // 4:
            del bounds[-2]
        plan.append(
            [
                Chunk(file_index, i, start, end)
                for i, (start, end) in enumerate(itertools.pairwise(bounds))
            ]
        )
    return plan


def in_fetch_order(plan: Sequence[Sequence[Chunk]]) -> list[Chunk]:
    """Round-robin over files, each in offset order: chunk 0 of every file, then chunk 1, ...

    Every file then has a few chunks in flight and a frontier that advances all along, so its
    trailing hasher keeps up; in file-after-file order all workers would sit on one file's
    chunks, finish them together, and leave that file's whole window to hash at the end
    (measured: the tail after the last byte halves).
    """
    return [c for wave in itertools.zip_longest(*plan) for c in wave if c is not None]
