"""Where a pull keeps its work beside the destination, on the same filesystem.

For a destination ``<parent>/<name>`` (for the agent: ``<cache-root>/models/<storage-key>``):

- ``<parent>/.<name>.partial/``  staging: ``files/`` (the tree being written), ``plan.json``
  (fingerprint and chunk size), ``journal`` (finished chunks), ``manifest.json`` (while publishing)
- ``<parent>/.<name>.manifest.json``  what the published model is (source, revision, digests)
- ``<parent>/.<name>.lock``  held while a process pulls into ``<name>``
- ``<parent>/.<name>.retired``  the previous version during a replace, removed right after

Hidden names keep ``models/`` listing only model folders, as KServe lays it out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.errors import DestinationBusyError


@dataclass(frozen=True, slots=True)
class StagingPaths:
    dest: Path

    def _sidecar(self, suffix: str) -> Path:
        return self.dest.parent / f".{self.dest.name}.{suffix}"

    @property
    def root(self) -> Path:
        return self._sidecar("partial")

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def staged_manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest(self) -> Path:
        return self._sidecar("manifest.json")

    @property
    def lock(self) -> Path:
        return self._sidecar("lock")

    @property
    def retired(self) -> Path:
        return self._sidecar("retired")


@contextlib.contextmanager
def exclusive_lock(paths: StagingPaths) -> Iterator[None]:
    """One process per destination: two writers must never share a partial file.

    flock is released by the kernel when the process dies, so a kill -9 never leaves it stuck.
    """
    paths.dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise DestinationBusyError(
                    f"another process is pulling into {paths.dest}: wait for it to finish "
                    "or stop it first"
                ) from e
            raise
        yield
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree_dirs(root: Path) -> None:
    """Make the directory entries of a freshly written tree durable before it is renamed."""
    for dirpath, _dirs, _files in os.walk(root):
        fsync_path(Path(dirpath))


def publish(paths: StagingPaths) -> None:
    """Move the staged tree to the destination and the staged manifest beside it.

    Each step is one rename, and `recover_publish` finishes the sequence after a crash, so the
    destination is always either the old complete model, absent, or the new complete model.
    """
    if paths.files.exists():
        if paths.dest.exists():
            if paths.retired.exists():
                shutil.rmtree(paths.retired)
            os.rename(paths.dest, paths.retired)
        os.rename(paths.files, paths.dest)
    if paths.staged_manifest.exists():
        os.rename(paths.staged_manifest, paths.manifest)
    fsync_path(paths.dest.parent)
    remove_staging(paths)


def recover_publish(paths: StagingPaths) -> None:
    """Finish a publish that a crash interrupted after the staged manifest was written."""
    if paths.staged_manifest.exists():
        publish(paths)
    elif paths.retired.exists():
        shutil.rmtree(paths.retired, ignore_errors=True)


def remove_staging(paths: StagingPaths) -> None:
    shutil.rmtree(paths.root, ignore_errors=True)
    shutil.rmtree(paths.retired, ignore_errors=True)
