"""The exception hierarchy every layer raises and catches.

Two branches matter to callers: a `TemporaryError` is worth retrying (with backoff, honouring
`retry_after` when the server gave one); a `PermanentError` is not, and its message tells the user
what to change. Messages say what happened, to what, and what to do next.
"""

from __future__ import annotations


class ModelCacheError(Exception):
    """Root of every error modelcache raises on purpose."""


class UsageError(ModelCacheError, ValueError):
    """Bad input from a user: a malformed URI, size or flag. Fix the input and run again."""


class PermanentError(ModelCacheError):
    """Retrying will not help: the source, the credentials or the destination must change."""


class TemporaryError(ModelCacheError):
    """A passing fault (5xx, 429, reset, stall); retrying later may succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceNotFoundError(PermanentError):
    """The repository, revision, bucket or file does not exist (HTTP 404)."""


class AccessDeniedError(PermanentError):
    """The source refused our credentials (HTTP 401/403)."""


class UnsafeListingError(PermanentError):
    """The source listed names that would escape the destination, or too many files."""


class InsufficientDiskError(PermanentError):
    """The destination filesystem cannot hold what remains to be written."""

    def __init__(self, message: str, *, needed: int | None, available: int | None) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class IntegrityError(PermanentError):
    """Downloaded bytes did not match the source's digest or size, even after re-fetching."""


class DestinationBusyError(PermanentError):
    """Another process is pulling into the same destination."""


class DestinationConflictError(PermanentError):
    """The destination holds something modelcache did not create; it will not overwrite it."""
