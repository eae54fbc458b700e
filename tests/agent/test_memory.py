"""Returning freed heap to the OS: harmless anywhere, effective on glibc."""

from __future__ import annotations

import platform

import psutil
import pytest

from modelcache.agent.memory import _malloc_trim, release_freed_memory

MiB = 1 << 20


def test_it_is_safe_to_call_anywhere() -> None:
    release_freed_memory()
    release_freed_memory()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_heap_freed_between_live_blocks_goes_back_to_the_system() -> None:
    assert _malloc_trim() is not None
    process = psutil.Process()
    # A pull's pattern: 256 KiB bodies with small long-lived allocations landing between them,
    # so the freed bodies leave holes glibc does not return by itself.
    # Freeing one mmapped 1 MiB block raises glibc's dynamic mmap threshold above it, as the
    # first bodies of a pull do: from then on 256 KiB blocks come from the heap.
    first = bytes(MiB)
    del first
    bodies, survivors = [], []
    for _ in range(600):
        bodies.append(bytes(256 * 1024))
        survivors.append(bytes(1024))
    del bodies
    before = process.memory_info().rss
    release_freed_memory()
    after = process.memory_info().rss
    assert before - after > 64 * MiB, (before // MiB, after // MiB)
    assert len(survivors) == 600
