"""The resume journal: which chunks are already on disk, surviving kill -9.

A record is appended (O_APPEND, one small write) after the chunk's bytes were written, so the
kernel has both even if the process dies at once; a torn last line is ignored on reading. The
plan file ties the journal to one fingerprint of the source: a changed source starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import cast

from modelcache.pulling.staging import StagingPaths

_PLAN_VERSION = 1


class Journal:
    """Append-only record of finished chunks. Methods do blocking I/O: call them from a thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()  # records come from several I/O threads
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, file_index: int, chunk_index: int) -> None:
        with self._lock:
            os.write(self._fd, b"%d %d\n" % (file_index, chunk_index))

    def forget_file(self, file_index: int) -> None:
        """Drop a file's records (its bytes failed verification and will be fetched again)."""
        with self._lock:
            kept = sorted(key for key in read_records(self._path) if key[0] != file_index)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text("".join(f"{f} {c}\n" for f, c in kept))
            os.close(self._fd)
            os.rename(tmp, self._path)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND, 0o644)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_records(path: Path) -> set[tuple[int, int]]:
    records: set[tuple[int, int]] = set()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    for line in data.split(b"\n")[:-1]:  # the last element is empty or a torn record
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            records.add((int(fields[0]), int(fields[1])))
    return records


def open_journal(
    paths: StagingPaths, fingerprint: str, chunk_size: int
) -> tuple[Journal, int, set[tuple[int, int]]]:
    """Open the journal for `fingerprint`, discarding staging left by a different source.

    Returns the journal, the chunk size to use (the one the partial was planned with, so a
    changed --chunk-size still resumes) and the finished chunks.
    """
    plan = _read_plan(paths.plan)
    if plan is not None and plan.get("fingerprint") == fingerprint:
        planned_chunk_size = cast(int, plan["chunkSize"])
        return Journal(paths.journal), planned_chunk_size, read_records(paths.journal)
    shutil.rmtree(paths.root, ignore_errors=True)
    paths.files.mkdir(parents=True)
    paths.plan.write_text(
        json.dumps({"version": _PLAN_VERSION, "fingerprint": fingerprint, "chunkSize": chunk_size})
    )
    return Journal(paths.journal), chunk_size, set()


def _read_plan(path: Path) -> dict[str, object] | None:
    try:
        plan = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(plan, dict) or plan.get("version") != _PLAN_VERSION:
        return None
    if not isinstance(plan.get("chunkSize"), int):
        return None
    return plan
