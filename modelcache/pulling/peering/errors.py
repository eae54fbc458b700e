"""Why a peer could not give a chunk: the pull takes the chunk elsewhere and remembers."""

from __future__ import annotations

from modelcache.contract.errors import TemporaryError


class PeerError(TemporaryError):
    def __init__(self, node: str, message: str, *, corrupt: bool = False, busy: bool = False):
        super().__init__(message)
        self.node = node
        self.corrupt = corrupt
        """The peer sent bytes that do not match its own digest: avoid it for the whole pull."""
        self.busy = busy
        """Its upload slots were full: try it again a little later."""
        self.discarded = 0
        """Bytes of the chunk written before the failure, to be written again."""
