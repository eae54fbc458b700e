"""What this node offers the peers of its node group: a chunk board per model, and the token they
must show to read it.

Boards come from two places. A running pull fills the board the keeper hands it (chunk by chunk,
completed on publish), and that same board goes on serving once the model is published. A model
published before this run (or by a pull that kept no board) gets its board lazily, from its
manifest, the first time a peer asks; manifests without chunk digests are remembered as "nothing
to serve" until the model changes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable

from modelcache.agent.layout import CacheLayout
from modelcache.pulling.peering import ChunkBoard, board_for_published

log = logging.getLogger(__name__)
TOKEN_OVERLAP = 120.0
"""Seconds the previous peer token stays valid after a new one arrives. A coordinator failover
may issue a new token; each peer learns it within one long poll of its own, so for a while the
group holds both."""


class PeerTokens:
    """The node group's peer token from this node's latest desired list, and the one before."""

    def __init__(
        self, overlap: float = TOKEN_OVERLAP, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._overlap = overlap
        self._clock = clock
        self._current: bytes | None = None
        self._previous: bytes | None = None
        self._previous_until = 0.0

    @property
    def known(self) -> bool:
        return self._current is not None or self._previous_valid()

    def update(self, token: str | None) -> None:
        new = _raw(token) if token else None
        if new == self._current:
            return
        if self._current is not None:
            self._previous, self._previous_until = self._current, self._clock() + self._overlap
        self._current = new

    def accepts(self, presented: str) -> bool:
        """Constant-time against both tokens (no early return tells which one was close)."""
        offered = _raw(presented)
        current = self._current is not None and hmac.compare_digest(offered, self._current)
        previous = self._previous is not None and hmac.compare_digest(offered, self._previous)
        return current or (previous and self._previous_valid())

    def _previous_valid(self) -> bool:
        return self._previous is not None and self._clock() < self._previous_until


def _raw(token: str) -> bytes:
    # Header values arrive decoded with surrogateescape; compare_digest needs bytes for non-ASCII.
    return token.encode("utf-8", "surrogateescape")


class Shelf:
    """Boards by storage key. Lives on the event loop; the keeper writes, the peer server reads."""

    def __init__(self, layout: CacheLayout, published: Callable[[str], bool]) -> None:
        """`published(key)`: the keeper holds the model published and is neither pulling nor
        removing it, so its manifest can be trusted to describe its files."""
        self._layout = layout
        self._published = published
        self._boards: dict[str, ChunkBoard | None] = {}
        """None: published, but its manifest kept no chunk digests (nothing to serve)."""
        self._load_lock = asyncio.Lock()
        self._changes = 0
        self._closed = False
        """Bumped on every change by the keeper: a lazy load that raced one is thrown away."""
        self.tokens = PeerTokens()

    def pulling(self, key: str) -> ChunkBoard:
        """A fresh board for one pull attempt (peers polling an older one see it close)."""
        self.drop(key)
        board = ChunkBoard()
        self._boards[key] = board
        return board

    def pull_ended(self, key: str, board: ChunkBoard) -> None:
        """Keep a board the pull completed; otherwise close it and let the manifest tell later."""
        if board.complete and not board.closed:
            return
        board.close()
        if self._boards.get(key, board) is board:
            self._boards.pop(key, None)
            self._changes += 1

    def drop(self, key: str) -> None:
        """The model goes away or changed on disk: peers stop reading it before its files go."""
        board = self._boards.pop(key, None)
        if board is not None:
            board.close()
        self._changes += 1

    def close(self) -> None:
        """Shutdown: wake every peer's long poll so the server can stop."""
        self._closed = True
        for board in self._boards.values():
            if board is not None:
                board.close()
        self._boards.clear()
        self._changes += 1

    async def find(self, key: str) -> ChunkBoard | None:
        """The board peers may read for `key`, or None when this node has nothing of it."""
        board = self._boards.get(key)
        if board is not None and not board.closed:
            return board if board.ready else None
        if key in self._boards or self._closed or not self._published(key):
            return None
        async with self._load_lock:  # one manifest read per model, however many peers ask
            if key in self._boards:
                board = self._boards[key]
                return board if board is not None and board.ready else None
            changes = self._changes
            try:
                loaded = await asyncio.to_thread(board_for_published, self._layout.model_dir(key))
            except OSError as e:  # not remembered: the next peer's request reads it again
                log.warning("%s: cannot read its manifest for peers: %s", key, e)
                return None
            if changes != self._changes or not self._published(key):
                return None  # pulled, damaged or deleted meanwhile: the peer asks again
            self._boards[key] = loaded
            if loaded is None:
                log.info("%s: its manifest has no chunk digests: not served to peers", key)
            return loaded
