"""Where a model lives on a node: KServe's storage key."""

from __future__ import annotations

import hashlib


def storage_key(source_model_uri: str) -> str:
    """First 16 hex characters of sha256(sourceModelUri), exactly as KServe names model folders."""
    return hashlib.sha256(source_model_uri.encode()).hexdigest()[:16]
