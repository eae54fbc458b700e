"""Which chunk a free worker fetches next, and from where: a peer that has it, or the origin.

Alone, a pull takes chunks in fetch order from the origin. With peers, a chunk some peer holds is
copied from the least busy such peer; the origin is asked only for chunks no peer holds nor is
fetching, and among those first for the chunks this node "owns": every pulling node ranks the
pullers by a hash of (chunk, node) and the top one owns the chunk, so nodes that start together
fetch different chunks from the origin without talking about it. An idle node also takes chunks
owned by others that nobody has started (they see it at their next look and skip it), and a
chunk whose owner died, went bad or stopped making progress is free for anyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelcache.pulling.peering.errors import PeerError
from modelcache.pulling.planning import Chunk
from modelcache.pulling.settings import PullSettings
from modelcache.pulling.transfers import FileTransfer

if TYPE_CHECKING:  # the tracker, and aiohttp with it, is imported only by pulls with peers
    from modelcache.pulling.peering.tracking import Key, PeerTracker, PeerView

IDLE_BEFORE_TAKING_OTHERS = 1.0
"""Seconds with nothing to do before an idle node takes origin chunks another node owns."""
BUSY_PEER_PAUSE = 0.5
FAILED_PEER_PAUSE = 2.0
MAX_FAILED_PEER_PAUSE = 30.0


@dataclass(frozen=True, slots=True)
class Assignment:
    chunk: Chunk
    peer: PeerView | None
    """None: from the origin."""

    @property
    def key(self) -> Key:
        return (self.chunk.file_index, self.chunk.index)


class ChunkScheduler:
    def __init__(
        self,
        transfers: Sequence[FileTransfer],
        order: Sequence[Chunk],
        settings: PullSettings,
        *,
        fingerprint: str,
        tracker: PeerTracker | None = None,
    ) -> None:
        self._transfers = transfers
        self._settings = settings
        self._fingerprint = fingerprint
        self.tracker = tracker
        for transfer in transfers:
            if transfer.remote.digest is None:
                # Without the source's digest nothing would catch a peer whose chunk digests lie
                # with its bytes: such a file (a plain https file, a multipart S3 object) comes
                # from the origin only.
                transfer.origin_only = True
        self._pending: dict[Key, Chunk] = {
            (c.file_index, c.index): c for c in order if not transfers[c.file_index].done[c.index]
        }
        """Chunks nobody here is fetching, in fetch order."""
        self._origin_active = 0
        self._peer_active = 0
        self._stopped = False
        self._wake = asyncio.Event()
        self._started = self._now()
        self._last_assigned = self._started
        self._owners: tuple[tuple[str, ...], frozenset[Key]] | None = None

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def needed(self, key: Key) -> bool:
        return not self._transfers[key[0]].done[key[1]]

    async def next(self) -> Assignment | None:
        """The next chunk for a free worker; None when the pull is over."""
        while not self._stopped:
            assignment = self._pick()
            if assignment is not None:
                self._last_assigned = self._now()
                return assignment
            self._wake.clear()
            try:
                async with asyncio.timeout(0.25):  # also re-looks at stalled peers and idleness
                    await self._wake.wait()
            except TimeoutError:
                pass
        return None

    def finished(self, assignment: Assignment) -> None:
        """The worker is done with it: fetched, or given up on by another worker's stream."""
        self._release(assignment)
        if assignment.peer is not None and not self.needed(assignment.key):
            assignment.peer.failures = 0
        if self.tracker is not None and not self.needed(assignment.key):
            self.tracker.forget(assignment.key)
        elif not self._transfers[assignment.chunk.file_index].streaming:
            self._pending[assignment.key] = assignment.chunk  # fetch it again
        self._wake.set()

    def peer_failed(self, assignment: Assignment, error: PeerError) -> None:
        peer = assignment.peer
        if peer is not None:
            if error.corrupt:
                peer.bad = True
            elif error.busy:
                peer.avoid_until = self._now() + BUSY_PEER_PAUSE
            else:
                peer.failures += 1
                pause = min(FAILED_PEER_PAUSE * 2 ** (peer.failures - 1), MAX_FAILED_PEER_PAUSE)
                peer.avoid_until = self._now() + pause
        self.finished(assignment)

    def refetch(self, transfer: FileTransfer) -> None:
        """The file failed its whole-file digest and is being reset: every chunk again. Peers that
        gave it chunks passed their own digests yet made a bad file: they are not asked again,
        and the file comes from the origin."""
        if transfer.peer_of and self.tracker is not None:
            for node in set(transfer.peer_of.values()):
                view = self.tracker.views.get(node)
                if view is not None:
                    view.bad = True
        if transfer.peer_of:
            transfer.origin_only = True
        for chunk in transfer.chunks:
            self._pending[(chunk.file_index, chunk.index)] = chunk
        self._wake.set()

    def _release(self, assignment: Assignment) -> None:
        if assignment.peer is None:
            self._origin_active -= 1
        else:
            assignment.peer.active -= 1
            self._peer_active -= 1

    def _now(self) -> float:
        return self.tracker.clock() if self.tracker is not None else 0.0

    def _pick(self) -> Assignment | None:
        self._drop_unneeded()
        if not self._pending:
            return None
        tracker = self.tracker
        if tracker is None:
            return self._from_origin(next(iter(self._pending))) if self._origin_free(1) else None
        now = self._now()
        from_peer = self._from_peer(now)
        if from_peer is not None:
            return from_peer
        if now - self._started < self._settings.peer_settle and not tracker.settled:
            return None  # peers not all started yet: who fetches what from the origin is open
        participants = tuple(sorted([tracker.group.me, *tracker.participants()]))
        if not self._origin_free(len(participants)):
            return None
        owned = self._owned(participants)
        idle = now - self._last_assigned >= IDLE_BEFORE_TAKING_OTHERS
        unowned: list[Key] = []
        for key in self._pending:
            if not self._origin_may_fetch(key, now):
                continue
            if owned is None or key in owned:
                return self._from_origin(key)
            if idle:
                unowned.append(key)
        if unowned:
            return self._from_origin(random.choice(unowned))
        return None

    def _drop_unneeded(self) -> None:
        """Chunks finished by another way (a worker streaming the whole file)."""
        while self._pending:
            key = next(iter(self._pending))
            transfer = self._transfers[key[0]]
            if transfer.done[key[1]] or transfer.streaming:
                del self._pending[key]
            else:
                return

    def _origin_free(self, participants: int) -> bool:
        # The group together keeps about as many requests at the origin as one node alone:
        # as much bandwidth, and each chunk done (and shared) sooner than if every node had
        # all its chunks trickling in at once.
        limit = self._settings.concurrency
        if participants > 1:
            limit = max(1, math.ceil(limit / participants))
        return self._origin_active < limit

    def _origin_may_fetch(self, key: Key, now: float) -> bool:
        assert self.tracker is not None
        transfer = self._transfers[key[0]]
        if transfer.streaming or transfer.done[key[1]]:
            return False
        if transfer.origin_only:
            return True
        views = self.tracker.views
        holders = self.tracker.holders.get(key, ())
        if any(views[n].usable and not views[n].failures for n in holders if n in views):
            return False  # a sound peer has it: wait for a slot there rather than ask the origin
        return not self.tracker.fetching_elsewhere(key, now)

    def _from_peer(self, now: float) -> Assignment | None:
        assert self.tracker is not None
        if self._peer_active >= self._settings.peer_concurrency:
            return None
        views = self.tracker.views
        holders = self.tracker.holders
        limit = self._settings.peers_per_chunk_request
        # In fetch order, not in the order peers announced chunks: each file's chunks then
        # land near its hashing frontier and are hashed from memory instead of read back.
        for key in self._pending:
            nodes = holders.get(key)
            if nodes is None:
                continue
            transfer = self._transfers[key[0]]
            if transfer.origin_only or transfer.streaming:
                continue
            candidates = [
                views[n]
                for n in nodes
                if n in views
                and views[n].usable
                and views[n].active < limit
                and views[n].avoid_until <= now
            ]
            if not candidates:
                continue
            least = min(v.active for v in candidates)
            peer = random.choice([v for v in candidates if v.active == least])
            del self._pending[key]
            peer.active += 1
            self._peer_active += 1
            return Assignment(self._transfers[key[0]].chunks[key[1]], peer)
        return None

    def _from_origin(self, key: Key) -> Assignment:
        chunk = self._pending.pop(key)
        self._origin_active += 1
        return Assignment(chunk, None)

    def _owned(self, participants: tuple[str, ...]) -> frozenset[Key] | None:
        """The chunks this node fetches from the origin first (rendezvous hashing); None for
        all of them (a node alone)."""
        if self._owners is not None and self._owners[0] == participants:
            return self._owners[1]
        assert self.tracker is not None
        me = self.tracker.group.me
        if participants == (me,):
            return None
        owned = set()
        for transfer in self._transfers:
            for chunk in transfer.chunks:
                key = (chunk.file_index, chunk.index)
                if max(participants, key=lambda node: _rank(self._fingerprint, key, node)) == me:
                    owned.add(key)
        self._owners = (participants, frozenset(owned))
        return self._owners[1]


def _rank(fingerprint: str, key: Key, node: str) -> bytes:
    return hashlib.blake2b(
        f"{fingerprint}|{key[0]}|{key[1]}|{node}".encode(), digest_size=8
    ).digest()
