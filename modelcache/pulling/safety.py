"""Refuse listings that would write outside the destination, before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from modelcache.contract.errors import UnsafeListingError
from modelcache.pulling.listing import RemoteFile

MAX_PATH_BYTES = 4096


def check_listing(source: str, files: Sequence[RemoteFile], *, max_files: int) -> None:
    """Every name must stay inside the destination, be unique, and the count must be bounded."""
    if len(files) > max_files:
        raise UnsafeListingError(
            f"{source} lists {len(files)} files, more than the limit of {max_files}: "
            "narrow it with --include/--exclude or raise --max-files"
        )
    seen: set[str] = set()
    prefixes: set[str] = set()
    for f in files:
        problem = unsafe_reason(f.path)
        if problem:
            raise UnsafeListingError(
                f"{source} lists an unsafe file name {f.path!r} ({problem}); nothing was written. "
                "The source is malformed or hostile: fix the repository listing"
            )
        if f.size < 0:
            raise UnsafeListingError(f"{source} lists {f.path!r} with negative size {f.size}")
        folded = f.path.casefold()
        if folded in seen:
            raise UnsafeListingError(
                f"{source} lists {f.path!r} twice (names differ by case only?)"
            )
        seen.add(folded)
        parts = PurePosixPath(f.path).parts
        prefixes.update("/".join(parts[:i]).casefold() for i in range(1, len(parts)))
    clash = seen & prefixes
    if clash:
        raise UnsafeListingError(
            f"{source} lists {sorted(clash)[0]!r} both as a file and as a folder"
        )


def unsafe_reason(path: str) -> str | None:
    """Why `path` cannot be used as a repo-relative file name, or None when it can."""
    if not path:
        return "empty name"
    if "\x00" in path:
        return "contains NUL"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    if len(path.encode()) > MAX_PATH_BYTES:
        return "name too long"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "contains an empty, '.' or '..' segment"
    if any(ord(ch) < 0x20 for ch in path):
        return "contains a control character"
    return None
