"""What a source holds, in one shape for every kind of source."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

DigestAlgorithm = Literal["sha256", "md5", "git-sha1"]


@dataclass(frozen=True, slots=True)
class Digest:
    """A digest the source vouches for: LFS sha256, S3 single-part ETag (md5), git blob sha1."""

    algorithm: DigestAlgorithm
    hex: str


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str
    """Repo-relative POSIX path; checked by `safety.check_listing` before use."""
    size: int
    url: str
    """Where the bytes are (ranged GETs); S3 sources sign per request instead."""
    digest: Digest | None = None
    etag: str | None = None
    """Opaque version tag; part of the fingerprint so a changed file discards old partials."""


@dataclass(frozen=True, slots=True)
class RemoteListing:
    source: str
    """The URI as the user gave it."""
    revision: str
    """What the source resolved to: a commit sha, or a digest of S3 ETags / the HTTP ETag."""
    files: tuple[RemoteFile, ...]
    request_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Headers every data request carries (Authorization for the Hub)."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def fingerprint(self) -> str:
        """Identity of the bytes this listing describes; a partial pull resumes only on a match."""
        identity: list[object] = [self.source, self.revision]
        identity += [
            [
                f.path,
                f.size,
                f.etag,
                f.digest.algorithm if f.digest else None,
                f.digest.hex if f.digest else None,
            ]
            for f in self.files
        ]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def filtered(self, include: Iterable[str], exclude: Iterable[str]) -> RemoteListing:
        include, exclude = tuple(include), tuple(exclude)
        kept = tuple(
            f
            for f in self.files
            if (not include or any(fnmatch.fnmatchcase(f.path, p) for p in include))
            and not any(fnmatch.fnmatchcase(f.path, p) for p in exclude)
        )
        return RemoteListing(self.source, self.revision, kept, self.request_headers)
