"""The peers one pull may fetch from, kept current by the agent as its desired list changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from modelcache.contract.agent_wire import Peer


class PeerGroup:
    """The live list of peers (and the group's token) for one model on this node.

    The agent calls `update` whenever the coordinator's list changes; a running pull picks the
    change up at once.
    """

    def __init__(
        self,
        storage_key: str,
        me: str,
        peers: Iterable[Peer] = (),
        token: str | None = None,
    ) -> None:
        self.storage_key = storage_key
        """The model's key in the peers' URLs."""
        self.me = me
        """This node's name: peers agree on who fetches which chunk from the origin by name."""
        self.peers: tuple[Peer, ...] = tuple(p for p in peers if p.node != me)
        self.token = token
        self.changed = asyncio.Event()

    def update(self, peers: Iterable[Peer], token: str | None) -> None:
        peers = tuple(p for p in peers if p.node != self.me)
        if peers != self.peers or token != self.token:
            self.peers, self.token = peers, token
            self.changed.set()
