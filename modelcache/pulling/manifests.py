"""The manifest kept beside a published model, so its contents can be checked later."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from modelcache.pulling.listing import Digest, DigestAlgorithm, RemoteListing

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class ManifestFile:
    path: str
    size: int
    digest: Digest | None
    chunk_digests: tuple[str, ...] = ()
    """sha256 of each chunk (of the manifest's `chunk_size`), when every chunk's is known: what
    peers check chunk copies against."""


@dataclass(frozen=True, slots=True)
class Manifest:
    source: str
    revision: str
    fingerprint: str
    files: tuple[ManifestFile, ...]
    finished_at: datetime
    chunk_size: int = 0
    """The chunk size of `ManifestFile.chunk_digests` (0: none kept)."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def for_listing(
        cls,
        listing: RemoteListing,
        finished_at: datetime | None = None,
        *,
        chunk_size: int = 0,
        chunk_digests: Sequence[tuple[str, ...]] = (),
    ) -> Manifest:
        digests = list(chunk_digests) or [()] * len(listing.files)
        return cls(
            source=listing.source,
            revision=listing.revision,
            fingerprint=listing.fingerprint(),
            files=tuple(
                ManifestFile(f.path, f.size, f.digest, chunks)
                for f, chunks in zip(listing.files, digests, strict=True)
            ),
            finished_at=finished_at or datetime.now(UTC),
            chunk_size=chunk_size if any(digests) else 0,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": MANIFEST_VERSION,
                "source": self.source,
                "revision": self.revision,
                "fingerprint": self.fingerprint,
                "finishedAt": self.finished_at.isoformat(),
                "totalBytes": self.total_bytes,
                "chunkSize": self.chunk_size,
                "files": [
                    {
                        "path": f.path,
                        "size": f.size,
                        "digest": (
                            {"algorithm": f.digest.algorithm, "hex": f.digest.hex}
                            if f.digest
                            else None
                        ),
                        "chunks": list(f.chunk_digests),
                    }
                    for f in self.files
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("version") != MANIFEST_VERSION:
            raise ValueError("not a modelcache manifest of a known version")
        files = []
        for entry in cast(list[dict[str, Any]], raw["files"]):
            digest = entry.get("digest")
            files.append(
                ManifestFile(
                    path=str(entry["path"]),
                    size=int(entry["size"]),
                    digest=Digest(cast(DigestAlgorithm, digest["algorithm"]), str(digest["hex"]))
                    if digest
                    else None,
                    chunk_digests=tuple(str(d) for d in entry.get("chunks") or ()),
                )
            )
        return cls(
            source=str(raw["source"]),
            revision=str(raw["revision"]),
            fingerprint=str(raw["fingerprint"]),
            files=tuple(files),
            finished_at=datetime.fromisoformat(str(raw["finishedAt"])),
            chunk_size=int(raw.get("chunkSize") or 0),
        )


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None when it is missing or unreadable (never trusted then)."""
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
