"""Free-space check before any byte moves."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import psutil

from modelcache.contract.errors import InsufficientDiskError, ModelCacheError, PermanentError
from modelcache.contract.quantities import format_bytes


async def ensure_free_space(directory: Path, needed: int, keep_free: int, *, what: str) -> None:
    """Fail at once, with both numbers, unless `needed` bytes fit and `keep_free` stay free."""
    usage = await asyncio.to_thread(psutil.disk_usage, str(directory))
    if needed + keep_free > usage.free:
        raise InsufficientDiskError(
            f"{what} needs {format_bytes(needed)} more on {directory} (keeping "
            f"{format_bytes(keep_free)} free) but only {format_bytes(usage.free)} is available: "
            "free some space, choose another destination, or lower --min-free",
            needed=needed + keep_free,
            available=usage.free,
        )


def disk_error(path: Path, error: OSError) -> ModelCacheError:
    """A local write that failed, as an error that names the file and the remedy."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientDiskError(
            f"{path}: the disk filled up while writing ({error.strerror}): free some space "
            "and run the pull again; it resumes",
            needed=None,
            available=None,
        )
    return PermanentError(
        f"cannot write {error.filename or path}: {error.strerror or error}: check that the "
        "destination is a writable folder on a local filesystem"
    )
