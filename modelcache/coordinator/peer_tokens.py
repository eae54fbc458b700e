"""The token agents of one node group show each other (`peerToken` in their desired lists).

Each group's token is an HMAC of its name under one key, so the coordinator keeps no table of
tokens and two coordinators with the same key hand out the same ones: with HA replicas sharing
the key (the Secret modelcache-peer-key), a failover does not change any group's token, and
agents go on fetching from each other. A node of another group holds another token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Final

from modelcache.contract.errors import UsageError

log = logging.getLogger(__name__)
MIN_KEY_BYTES: Final = 16
_CREATE_SECRET: Final = (
    "kubectl create secret generic modelcache-peer-key -n modelcache-system "
    "--from-literal=key=$(openssl rand -hex 32)"
)


class PeerTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._tokens: dict[str, str] = {}

    def __repr__(self) -> str:
        return "PeerTokens(<key>)"  # the key stays out of logs and tracebacks

    def for_group(self, group: str | None) -> str | None:
        """The group's token; a node without a group has no peers and gets none."""
        if group is None:
            return None
        token = self._tokens.get(group)
        if token is None:
            message = b"modelcache-peer:" + group.encode()
            token = self._tokens[group] = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return token


def load_peer_key(path: Path | None) -> bytes:
    """The key in `path` (its bytes, surrounding whitespace stripped), or a random one when no
    file is given or the optional Secret behind it is not there. Blocking: call in a thread."""
    if path is None:
        log.info(
            "no --peer-key-file: peer tokens come from a random key of this process, so HA "
            "replicas hand out different ones (after a failover agents fetch from the origin "
            "until they have the new leader's token); share a key with --peer-key-file"
        )
        return secrets.token_bytes(32)
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        log.warning(
            "peer key file %s does not exist (is the Secret modelcache-peer-key missing?): "
            "using a random key, so HA replicas hand out different peer tokens; create it with "
            "`%s` and restart the coordinators",
            path,
            _CREATE_SECRET,
        )
        return secrets.token_bytes(32)
    except OSError as e:
        raise UsageError(f"--peer-key-file {path}: cannot read it: {e}") from e
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(
            f"--peer-key-file {path}: the key is {len(key)} bytes, fewer than {MIN_KEY_BYTES}: "
            f"put a random key in it, e.g. `{_CREATE_SECRET}`"
        )
    return key


__all__ = ["PeerTokens", "load_peer_key"]
