"""What one pull knows of its peers' chunks: a long poll per peer, kept as the peer list changes.

Each peer's chunk map arrives as an append-only log (`peer_wire`); the tracker merges it into two
indexes the scheduler asks at every decision: which peers hold a chunk this node still needs, and
which peers are fetching a chunk from the origin right now (so nobody else does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from modelcache.contract.agent_wire import Peer
from modelcache.contract.peer_wire import CHUNKS_PATH, ChunkMap, parse_chunk_map
from modelcache.pulling.peering.swarm import PeerGroup

log = logging.getLogger(__name__)

Key = tuple[int, int]
POLL_WAIT = 2
"""Seconds a chunk-map long poll may wait: the longest a peer's origin progress goes unseen."""
STALE_AFTER = 4 * POLL_WAIT
"""A chunk a peer fetches from the origin without progress for this long is free to take."""


@dataclass(slots=True)
class PeerView:
    node: str
    url: str
    unreachable: bool = False
    """Its last chunk-map request got no HTTP answer (down, or not listening)."""
    alive: bool = False
    """Its last chunk map answered, for this very listing (fingerprint and chunk size)."""
    complete: bool = False
    held: dict[Key, str] = field(default_factory=dict)
    """Chunk -> sha256, as the peer announced."""
    inflight: dict[Key, tuple[int, float]] = field(default_factory=dict)
    """Chunk it fetches from the origin -> (bytes so far, when they last moved)."""
    position: int = 0
    active: int = 0
    """This pull's requests to it in flight."""
    avoid_until: float = 0.0
    failures: int = 0
    """Requests to it that failed in a row: while any, its chunks may come from the origin."""
    bad: bool = False
    """It sent bytes that do not match its own digest: not asked again during this pull."""

    @property
    def usable(self) -> bool:
        return self.alive and not self.bad


class PeerTracker:
    """The peers of one pull and what they hold. Lives on the event loop."""

    def __init__(
        self,
        group: PeerGroup,
        session: aiohttp.ClientSession,
        *,
        fingerprint: str,
        chunk_size: int,
        needed: Callable[[Key], bool],
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self._session = session
        self._fingerprint = fingerprint
        self._chunk_size = chunk_size
        self._needed = needed
        self._on_change = on_change
        self.clock = clock
        self.views: dict[str, PeerView] = {}
        self.holders: dict[Key, set[str]] = {}
        """Chunks this node still needs -> peers that announced them."""
        self._polls: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Keep one poll per listed peer until cancelled."""
        try:
            while True:
                self.group.changed.clear()
                self._follow(self.group.peers)
                await self.group.changed.wait()
        finally:
            for task in self._polls.values():
                task.cancel()
            await asyncio.gather(*self._polls.values(), return_exceptions=True)

    def _follow(self, peers: tuple[Peer, ...]) -> None:
        listed = {p.node: p for p in peers}
        gone = [n for n in self._polls if n not in listed or listed[n].url != self.views[n].url]
        for node in gone:
            self._polls.pop(node).cancel()
            self._drop(self.views.pop(node))
        for node, peer in listed.items():
            if node not in self._polls:
                view = self.views[node] = PeerView(node, peer.url)
                self._polls[node] = asyncio.create_task(self._poll(view), name=f"peer-map:{node}")
        self._on_change()

    def forget(self, key: Key) -> None:
        """This node has the chunk now."""
        self.holders.pop(key, None)

    def fetching_elsewhere(self, key: Key, now: float) -> bool:
        """A live peer is fetching the chunk from the origin and its bytes still move."""
        for view in self.views.values():
            entry = view.inflight.get(key)
            if entry is not None and view.usable and now - entry[1] < STALE_AFTER:
                return True
        return False

    def participants(self) -> list[str]:
        """Peers that share out the origin's chunks with this node: pulling the same listing."""
        return [v.node for v in self.views.values() if v.usable and not v.complete]

    @property
    def settled(self) -> bool:
        """Every listed peer is known to pull the same listing, hold it, or be unreachable. A
        peer that answers but has not started the model yet (404) is about to: unsettled."""
        return all(v.alive or v.unreachable for v in self.views.values())

    async def _poll(self, view: PeerView) -> None:
        url = view.url + CHUNKS_PATH.format(key=self.group.storage_key)
        delay = 0.25
        while True:
            headers = {"Authorization": f"Bearer {self.group.token}"} if self.group.token else {}
            params = {"from": str(view.position), "wait": str(POLL_WAIT)}
            try:
                chunk_map = await self._fetch_map(url, params, headers)
            # A malformed map is a FieldError, a ValueError.
            except (aiohttp.ClientError, TimeoutError, ValueError, _Unavailable) as e:
                if view.alive or not view.unreachable:
                    log.debug("peer %s: chunk map unavailable: %s", view.node, e)
                view.unreachable = not isinstance(e, _Unavailable)
                self._drop(view)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.25
            view.unreachable = False
            same = (chunk_map.fingerprint, chunk_map.chunk_size) == (
                self._fingerprint,
                self._chunk_size,
            )
            if not same:
                self._drop(view)  # another revision or chunk size: nothing to share
                await asyncio.sleep(POLL_WAIT)
                continue
            self._merge(view, chunk_map)

    async def _fetch_map(
        self, url: str, params: dict[str, str], headers: dict[str, str]
    ) -> ChunkMap:
        timeout = aiohttp.ClientTimeout(total=POLL_WAIT + 5, sock_connect=2)
        async with self._session.get(url, params=params, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                # 404: not pulling it (yet); 401: tokens differ for now (after a failover).
                raise _Unavailable(f"HTTP {resp.status}")
            return parse_chunk_map(await resp.json())

    def _merge(self, view: PeerView, chunk_map: ChunkMap) -> None:
        if chunk_map.next < view.position or not view.alive:
            self._drop(view)  # its log restarted (it dropped a file): read it all again
        view.alive = True
        view.complete = chunk_map.complete
        view.position = chunk_map.next
        for record in chunk_map.records:
            key = (record.file_index, record.chunk_index)
            view.held[key] = record.sha256
            if self._needed(key):
                self.holders.setdefault(key, set()).add(view.node)
        now = self.clock()
        view.inflight = {
            key: (done, old[1] if (old := view.inflight.get(key)) and old[0] == done else now)
            for key, done in chunk_map.inflight.items()
        }
        self._on_change()

    def _drop(self, view: PeerView) -> None:
        """Forget what it holds: unreachable, restarted, or on another listing."""
        for key in view.held:
            holders = self.holders.get(key)
            if holders is not None:
                holders.discard(view.node)
                if not holders:
                    del self.holders[key]
        view.held.clear()
        view.inflight.clear()
        view.position = 0
        was_alive, view.alive = view.alive, False
        if was_alive:
            self._on_change()


class _Unavailable(Exception):
    pass
