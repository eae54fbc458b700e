"""The resume journal: which chunks are already on disk, surviving kill -9.

A record (``file chunk [sha256]``) is appended (O_APPEND, one small write) after the chunk's bytes
were written, so the kernel has both even if the process dies at once; a torn last line is ignored
on reading. The chunk's sha256, when the pull computed one, is what peers check copies against. The
plan file ties the journal to one fingerprint of the source: a changed source starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import cast

from modelcache.contract.peer_wire import is_sha256_hex
from modelcache.pulling.staging import StagingPaths

_PLAN_VERSION = 1


class Journal:
    """Append-only record of finished chunks. Methods do blocking I/O: call them from a thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()  # records come from several I/O threads
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, file_index: int, chunk_index: int, sha256: str = "") -> None:
        line = f"{file_index} {chunk_index} {sha256}".rstrip() + "\n"
        with self._lock:
            os.write(self._fd, line.encode())

    def forget_file(self, file_index: int) -> None:
        """Drop a file's records (its bytes failed verification and will be fetched again)."""
        with self._lock:
            kept = sorted(
                (key, digest)
                for key, digest in read_journal(self._path).items()
                if key[0] != file_index
            )
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text("".join(f"{f} {c} {d}".rstrip() + "\n" for (f, c), d in kept))
            os.close(self._fd)
            os.rename(tmp, self._path)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND, 0o644)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_records(path: Path) -> set[tuple[int, int]]:
    return set(read_journal(path))


def read_journal(path: Path) -> dict[tuple[int, int], str]:
    """Finished chunks -> their sha256 ("" when the pull did not hash chunks)."""
    records: dict[tuple[int, int], str] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    for line in data.split(b"\n")[:-1]:  # the last element is empty or a torn record
        fields = line.split()
        if len(fields) not in (2, 3) or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        digest = fields[2].decode() if len(fields) == 3 else ""
        if digest and not is_sha256_hex(digest):
            continue
        records[(int(fields[0]), int(fields[1]))] = digest
    return records


def open_journal(
    paths: StagingPaths, fingerprint: str, chunk_size: int
) -> tuple[Journal, int, dict[tuple[int, int], str]]:
    """Open the journal for `fingerprint`, discarding staging left by a different source.

    Returns the journal, the chunk size to use (the one the partial was planned with, so a
    changed --chunk-size still resumes) and the finished chunks.
    """
    plan = _read_plan(paths.plan)
    if plan is not None and plan.get("fingerprint") == fingerprint:
        planned_chunk_size = cast(int, plan["chunkSize"])
        return Journal(paths.journal), planned_chunk_size, read_journal(paths.journal)
    shutil.rmtree(paths.root, ignore_errors=True)
    paths.files.mkdir(parents=True)
    paths.plan.write_text(
        json.dumps({"version": _PLAN_VERSION, "fingerprint": fingerprint, "chunkSize": chunk_size})
    )
    return Journal(paths.journal), chunk_size, {}


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
