"""What is on disk for one destination, without asking the source: for agents that restart,
rescan, or delete. All functions block (stat, read, unlink): call them on a thread."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from modelcache.pulling.manifests import Manifest, read_manifest
from modelcache.pulling.staging import StagingPaths, exclusive_lock, recover_publish
from modelcache.pulling.verifying import VerifyProblem, check_published


@dataclass(frozen=True, slots=True)
class PublishedModel:
    manifest: Manifest
    problems: tuple[VerifyProblem, ...]

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def digest_mismatch(self) -> bool:
        """Same sizes, different bytes: the next pull must re-hash instead of trusting files."""
        return any(p.content_differs for p in self.problems)

    def describe_problems(self, limit: int = 3) -> str:
        shown = "; ".join(f"{p.path}: {p.reason}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f" (and {more} more)" if more > 0 else "")


def inspect_published(dest: Path, *, digests: bool) -> PublishedModel | None:
    """The published model at `dest` checked against its manifest, or None when none is.

    Sizes and files always; files modified after publishing are hashed; every file is hashed
    when `digests`. A publish that a crash interrupted is finished first (under the pull lock).
    """
    paths = StagingPaths(dest)
    if paths.staged_manifest.exists():
        with exclusive_lock(paths):
            recover_publish(paths)
    manifest = read_manifest(paths.manifest)
    if manifest is None:
        return None
    problems = check_published(dest, manifest, digests=digests, hash_changed=True)
    return PublishedModel(manifest, tuple(problems))


def staged_bytes(dest: Path) -> int:
    """Disk blocks already held by an unfinished pull into `dest` (a resume needs less)."""
    total = 0
    for dirpath, _dirs, files in os.walk(StagingPaths(dest).files):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def remove_model(dest: Path) -> None:
    """Remove a model and everything a pull keeps beside it, manifest first.

    Without its manifest a half-removed folder is never taken for a published model, so a crash
    in the middle leaves nothing that looks valid. Takes the pull lock: it never pulls the floor
    from under a running pull.
    """
    paths = StagingPaths(dest)
    with exclusive_lock(paths):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.manifest)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.staged_manifest)
        if dest.is_symlink() or dest.is_file():
            os.unlink(dest)
        elif dest.exists():
            shutil.rmtree(dest)
        shutil.rmtree(paths.root, ignore_errors=True)
        shutil.rmtree(paths.retired, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.lock)
