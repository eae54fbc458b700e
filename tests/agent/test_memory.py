"""Returning freed heap to the OS: harmless anywhere, effective on glibc."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from modelcache.agent.memory import release_freed_memory

# Run in a fresh interpreter: how a long-lived test process's heap is laid out is not knowable.
_PROBE = """
import psutil
from modelcache.agent.memory import release_freed_memory

process = psutil.Process()
# Freeing one mmapped 1 MiB block raises glibc's dynamic mmap threshold above it, as the first
# bodies of a pull do: from then on 256 KiB blocks come from the heap.
first = bytes(1 << 20)
del first
# A pull's pattern: 256 KiB bodies with small long-lived allocations landing between them, so the
# freed bodies leave holes that glibc does not return by itself.
bodies, survivors = [], []
for _ in range(600):
    bodies.append(bytes(256 * 1024))
    survivors.append(bytes(1024))
del bodies
held = process.memory_info().rss
release_freed_memory()
print(held - process.memory_info().rss)
"""


def test_it_is_safe_to_call_anywhere() -> None:
    release_freed_memory()
    release_freed_memory()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_heap_freed_between_live_blocks_goes_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    returned = int(out.stdout)
    assert returned > 64 << 20, f"only {returned >> 20} MiB returned of ~150 MiB freed"
