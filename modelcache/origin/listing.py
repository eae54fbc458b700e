"""The JSON the Hub answers for repository metadata, built from a `ServedRepo`.

Shapes follow what huggingface_hub 2.4 parses (`ModelInfo`, `RepoFile`, `RepoFolder`), as
`Raw*` TypedDicts so the wire format is written down in one place.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal, NotRequired, TypedDict

from .repos import ServedFile, ServedRepo


class RawLfsInfo(TypedDict):
    oid: str  # sha256 of the content
    size: int
    pointerSize: int


class RawTreeFile(TypedDict):
    type: Literal["file"]
    oid: str  # git blob sha1 (of the pointer, for LFS files)
    size: int
    path: str
    lfs: NotRequired[RawLfsInfo]
    xetHash: NotRequired[str]


class RawTreeDirectory(TypedDict):
    type: Literal["directory"]
    oid: str
    size: int
    path: str


RawTreeEntry = RawTreeFile | RawTreeDirectory


class RawSiblingLfs(TypedDict):
    sha256: str
    size: int
    pointerSize: int


class RawSibling(TypedDict):
    rfilename: str
    size: NotRequired[int]
    blobId: NotRequired[str]
    lfs: NotRequired[RawSiblingLfs]


class RawModelInfo(TypedDict):
    id: str
    modelId: str
    author: str
    sha: str
    private: bool
    disabled: bool
    gated: Literal[False, "auto"]
    lastModified: str
    tags: list[str]
    siblings: list[RawSibling]


def model_info(repo: ServedRepo, sha: str, *, last_modified: datetime, blobs: bool) -> RawModelInfo:
    """`GET /api/models/{repo}/revision/{rev}`; `blobs` adds sizes and LFS digests."""
    siblings: list[RawSibling] = []
    for served in repo.files:
        sibling: RawSibling = {"rfilename": served.path}
        if blobs:
            sibling["size"] = served.size
            sibling["blobId"] = served.tree_oid
            if served.is_lfs:
                sibling["lfs"] = {
                    "sha256": served.sha256,
                    "size": served.size,
                    "pointerSize": len(served.lfs_pointer),
                }
        siblings.append(sibling)
    return {
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.partition("/")[0],
        "sha": sha,
        "private": False,
        "disabled": False,
        "gated": "auto" if repo.gated else False,
        "lastModified": last_modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "tags": [],
        "siblings": siblings,
    }


def tree_entries(repo: ServedRepo, prefix: str, *, recursive: bool) -> list[RawTreeEntry] | None:
    """Entries under folder `prefix` ("" for the root), sorted by path; None: no such folder."""
    prefix = prefix.strip("/")
    under = [f for f in repo.files if not prefix or f.path.startswith(prefix + "/")]
    if prefix and not under:
        return None
    files: list[RawTreeEntry] = []
    folders: dict[str, list[ServedFile]] = {}
    for served in under:
        relative = served.path[len(prefix) + 1 :] if prefix else served.path
        parts = relative.split("/")
        depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
        for level in range(1, depth + 1):
            folder = "/".join(filter(None, [prefix, *parts[:level]]))
            folders.setdefault(folder, []).append(served)
        if recursive or len(parts) == 1:
            files.append(_file_entry(served, xet=repo.xet))
    entries = files + [_folder_entry(path, content) for path, content in folders.items()]
    return sorted(entries, key=lambda entry: entry["path"])


def _file_entry(served: ServedFile, *, xet: bool) -> RawTreeFile:
    entry: RawTreeFile = {
        "type": "file",
        "oid": served.tree_oid,
        "size": served.size,
        "path": served.path,
    }
    if served.is_lfs:
        entry["lfs"] = {
            "oid": served.sha256,
            "size": served.size,
            "pointerSize": len(served.lfs_pointer),
        }
        if xet:
            entry["xetHash"] = served.xet_hash
    return entry


def _folder_entry(path: str, content: list[ServedFile]) -> RawTreeDirectory:
    """A folder's `oid` stands in for git's tree sha1: it changes when anything below does."""
    digest = hashlib.sha1(b"tree\0", usedforsecurity=False)
    for served in sorted(content, key=lambda f: f.path):
        digest.update(b"%s\0%s\n" % (served.path.encode(), served.tree_oid.encode()))
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}
