"""How a failed pull is reported: a short machine reason, and whether to retry soon."""

from __future__ import annotations

from modelcache.contract.errors import (
    AccessDeniedError,
    DestinationBusyError,
    DestinationConflictError,
    InsufficientDiskError,
    IntegrityError,
    ModelCacheError,
    SourceNotFoundError,
    TemporaryError,
    UnsafeListingError,
    UsageError,
)

_REASONS: tuple[tuple[type[ModelCacheError], str], ...] = (
    (InsufficientDiskError, "InsufficientDisk"),
    (SourceNotFoundError, "SourceNotFound"),
    (AccessDeniedError, "AccessDenied"),
    (IntegrityError, "DigestMismatch"),
    (UnsafeListingError, "UnsafeListing"),
    (DestinationConflictError, "DestinationConflict"),
    (DestinationBusyError, "DestinationBusy"),
    (UsageError, "InvalidSource"),
    (TemporaryError, "SourceUnavailable"),
)


def reason_of(error: ModelCacheError) -> str:
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "PullFailed"


def is_temporary(error: ModelCacheError) -> bool:
    """Worth another try in seconds, not at the next error retry interval.

    A busy destination is another process finishing its pull (an old agent still exiting).
    """
    return isinstance(error, TemporaryError | DestinationBusyError)
