"""The model repositories an origin serves: files on disk plus the digests the Hub would publish.

The Hub names every file by two digests. Small files live in git, so their tree `oid` is the
git blob sha1 of the content. Large files (LFS) live in git as a ~130-byte pointer: the tree
`oid` is the pointer's blob sha1 and the content digest is the sha256 in `lfs.oid`. Clients
that confuse the two break against the real Hub, so the origin reproduces both exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LFS_THRESHOLD = 1 << 20
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")

_READ_BLOCK = 8 << 20
_SKIPPED_DIRS = frozenset({".git", ".cache"})


def git_blob_sha1(content: bytes) -> str:
    """The sha1 git gives a blob with this content (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class ServedFile:
    """One file of a repository (or a plain file), with the digests clients may check."""

    path: str
    size: int
    disk_path: Path
    sha256: str
    git_sha1: str
    is_lfs: bool

    @property
    def lfs_pointer(self) -> bytes:
        """The git-lfs pointer file git stores in place of an LFS file's content."""
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (
            self.sha256.encode(),
            self.size,
        )

    @property
    def tree_oid(self) -> str:
        """The `oid` of this file in a tree listing: the blob git really stores."""
        return git_blob_sha1(self.lfs_pointer) if self.is_lfs else self.git_sha1

    @property
    def etag(self) -> str:
        """The (unquoted) ETag the Hub sends: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.is_lfs else self.git_sha1

    @property
    def xet_hash(self) -> str:
        """A stand-in Xet merkle hash: 64 hex, stable, distinct from the sha256."""
        return hashlib.sha256(b"xet:" + bytes.fromhex(self.sha256)).hexdigest()


@dataclass
class ServedRepo:
    """A model repository at one commit; every name in `revisions` points at that commit."""

    repo_id: str
    commit_sha: str
    files: list[ServedFile]
    revisions: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    xet: bool = False

    def __post_init__(self) -> None:
        owner, _, name = self.repo_id.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repo id must look like 'owner/model', got {self.repo_id!r}")
        if not self.revisions:
            self.revisions = {"main": self.commit_sha}

    def resolve_revision(self, revision: str) -> str | None:
        """The commit sha a branch, tag or sha names, or None when this repo does not know it."""
        if revision in self.revisions:
            return self.revisions[revision]
        if revision == self.commit_sha or revision in self.revisions.values():
            return revision
        return None

    def find(self, path: str) -> ServedFile | None:
        return next((f for f in self.files if f.path == path), None)


def load_file(
    path: str, disk_path: Path, *, lfs_threshold: int = DEFAULT_LFS_THRESHOLD
) -> ServedFile:
    """Hash one file on disk. Blocking: call through `asyncio.to_thread` from async code."""
    size = disk_path.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    seen = 0
    with disk_path.open("rb") as f:
        while block := f.read(_READ_BLOCK):
            sha256.update(block)
            git.update(block)
            seen += len(block)
    if seen != size:
        raise RuntimeError(f"{disk_path} changed while it was hashed ({size} -> {seen} bytes)")
    return ServedFile(
        path=path,
        size=size,
        disk_path=disk_path,
        sha256=sha256.hexdigest(),
        git_sha1=git.hexdigest(),
        is_lfs=size > lfs_threshold or path.endswith(LFS_SUFFIXES),
    )


def commit_sha_of(files: Iterable[ServedFile]) -> str:
    """A 40-hex commit id that changes whenever a path or a file's content changes."""
    digest = hashlib.sha1(b"modelcache-origin-commit\n", usedforsecurity=False)
    for served in sorted(files, key=lambda f: f.path):
        digest.update(b"%s\0%s\n" % (served.path.encode(), served.sha256.encode()))
    return digest.hexdigest()


def load_repo(
    repo_id: str,
    directory: Path,
    *,
    lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
    gated: bool = False,
    xet: bool = False,
) -> ServedRepo:
    """Serve every file under `directory` as `repo_id`; blocking (hashes everything).

    Directories named `.git` or `.cache` are skipped, as a Hub snapshot would not contain them.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot serve {repo_id!r}: {directory} is not a directory")
    files: list[ServedFile] = []
    for current, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for filename in sorted(filenames):
            disk_path = Path(current, filename)
            relative = disk_path.relative_to(directory).as_posix()
            files.append(load_file(relative, disk_path, lfs_threshold=lfs_threshold))
    files.sort(key=lambda f: f.path)
    return ServedRepo(
        repo_id=repo_id, commit_sha=commit_sha_of(files), files=files, gated=gated, xet=xet
    )
