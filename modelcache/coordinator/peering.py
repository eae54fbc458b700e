"""Which peers each node is told about for each model, and whose list a change alters.

Agents of one node group fetch a model's chunks from each other; the coordinator only says who
may serve whom. A node is a *source* of a model in its group while its agent gave a usable URL,
it is Ready, and it is told to hold the model or still reports it ModelDownloading or
ModelDownloaded (`NodeRecord.serving_keys`).

Each node is told at most `MAX_PEERS` sources per model, chosen by consistent hashing: for every
(group, storage key) the group's nodes sit on a ring at sha256(node|storageKey), and a node's
peers are the first `MAX_PEERS` sources clockwise after its own place (itself skipped). That is
deterministic (HA replicas agree), spreads the load (each source serves the nodes of the arc
before it, about MAX_PEERS x nodes / sources of them) and gives neighbours different lists.

Why a ring rather than rendezvous hashing (each node's top 32 by sha256(node|peer|key)): the
coordinator must bump the generation of exactly the nodes whose list changed when a source comes
or goes, with 10,000 agents reporting. On the ring those nodes are one arc, found by bisection:
O(log n + the nodes that change), and a node's list is rendered from the sources alone. With
rendezvous, knowing whose top 32 a new source enters takes one hash per node of the group at
every change, or every node's list kept in memory. The registry publishes changes once per
tick (`Registry.publish_peers`).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from modelcache.contract.agent_wire import Peer

MAX_PEERS: Final = 32
Place = tuple[int, str]
"""(position on the ring, node name): the name breaks the tie of two equal positions."""
Span = tuple[int, int]
"""[first, last) indexes into a ring."""


def place_of(node: str, storage_key: str) -> Place:
    digest = hashlib.sha256(f"{node}|{storage_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big"), node


@dataclass(frozen=True, slots=True)
class _Offer:
    """What one node serves its group."""

    group: str
    peer: Peer  # made once: every list it is on shows it
    keys: frozenset[str]


class PeerIndex:
    """Sources per (group, storage key), and the group's nodes on a ring for the models they are
    told peers for (`watch`), so a change finds the nodes whose list it changes."""

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self.max_peers = max_peers
        self._sources: dict[tuple[str, str], list[Place]] = {}
        self._offers: dict[str, _Offer] = {}
        self._groups: dict[str, set[str]] = {}  # group -> its nodes
        self._group_of: dict[str, str] = {}
        self._rings: dict[str, dict[str, list[Place]]] = {}  # group -> storage key -> nodes

    # --- who wants peers ------------------------------------------------------------------------

    def watch(self, wanted: Mapping[str, Iterable[str]]) -> None:
        """The storage keys each group's nodes are told peers for (placement changed). A group
        or key new here has its nodes placed on a ring; one no longer wanted is dropped."""
        rings: dict[str, dict[str, list[Place]]] = {}
        for group, keys in wanted.items():
            current = self._rings.get(group, {})
            members = self._groups.get(group, ())
            rings[group] = {
                key: current[key] if key in current else sorted(place_of(n, key) for n in members)
                for key in keys
            }
        self._rings = rings

    def set_group(self, node: str, group: str | None) -> None:
        """The node's group (None: none, or gone). Only nodes' own lists depend on it, and a
        node that changes group gets a new desired list anyway: nothing to bump."""
        old = self._group_of.get(node)
        if old == group:
            return
        if old is not None:
            self._groups[old].discard(node)
            if not self._groups[old]:
                del self._groups[old]
            for key, ring in self._rings.get(old, {}).items():
                place = place_of(node, key)
                index = bisect_left(ring, place)
                if index < len(ring) and ring[index] == place:
                    del ring[index]
            del self._group_of[node]
        if group is not None:
            self._group_of[node] = group
            self._groups.setdefault(group, set()).add(node)
            for key, ring in self._rings.get(group, {}).items():
                insort(ring, place_of(node, key))

    # --- who serves -----------------------------------------------------------------------------

    def publish(self, offers: Mapping[str, tuple[str | None, str, frozenset[str]]]) -> set[str]:
        """What these nodes serve now, node -> (group, url, storage keys) (nothing without a
        group, a URL or a model); answers the nodes whose list of peers changed.

        Applied as one batch: per (group, key), a node's list changed exactly when a source that
        left was in its list before or a source that came is in it after (a URL that changed
        counts as both), so each change marks one arc, computed on the sources before (left) or
        after (came), and the arcs are merged before their nodes are collected: a tick in which
        hundreds of nodes start costs the nodes it changes, not hundreds of overlapping arcs."""
        leaving: dict[tuple[str, str], list[Place]] = {}
        coming: dict[tuple[str, str], list[Place]] = {}
        for node, (group, url, keys) in offers.items():
            new = _Offer(group, Peer(node, url), keys) if group and url and keys else None
            old = self._offers.get(node)
            if new == old:
                continue  # a report with more bytes done: the common case, and free
            if (
                old is not None
                and new is not None
                and (old.group, old.peer) == (new.group, new.peer)
            ):
                gone, came = old.keys - new.keys, new.keys - old.keys
            else:  # moved to another group or URL: out everywhere, then in again
                gone = old.keys if old is not None else frozenset()
                came = new.keys if new is not None else frozenset()
            if old is not None:
                for key in gone:
                    leaving.setdefault((old.group, key), []).append(place_of(node, key))
            if new is None:
                del self._offers[node]
            else:
                self._offers[node] = new
                for key in came:
                    coming.setdefault((new.group, key), []).append(place_of(node, key))
        changed: set[str] = set()
        for pair in leaving.keys() | coming.keys():
            changed |= self._apply(pair, leaving.get(pair, []), coming.get(pair, []))
        return changed

    def forget(self, node: str) -> set[str]:
        """The node is gone: the nodes whose list of peers changed."""
        changed = self.publish({node: (None, "", frozenset())})
        self.set_group(node, None)
        return changed

    def _apply(self, pair: tuple[str, str], leaving: list[Place], coming: list[Place]) -> set[str]:
        before = self._sources.get(pair, [])
        ring = self._rings.get(pair[0], {}).get(pair[1], [])
        spans = [span for place in leaving for span in self._seeing(ring, before, place)]
        gone = set(leaving)
        after = [place for place in before if place not in gone]
        after.extend(coming)  # a URL that changed: out, then in again
        after.sort()
        spans += [span for place in coming for span in self._seeing(ring, after, place)]
        if after:
            self._sources[pair] = after
        else:
            self._sources.pop(pair, None)
        changed: set[str] = set()
        end = 0
        for first, last in sorted(spans):  # merged, so each node is visited once
            first = max(first, end)
            if first < last:
                changed.update(name for _, name in ring[first:last])
                end = last
        return changed

    def _seeing(self, ring: list[Place], sources: list[Place], place: Place) -> list[Span]:
        """Where on the ring the nodes are whose peers include the source at `place` (one of
        `sources`): those with fewer than `max_peers` other sources between them and it,
        clockwise. With fewer than `max_peers` sources besides it that is everyone else; else
        the arc from the `max_peers`-th source before it (included: that one's list starts after
        itself) up to it."""
        if not ring:
            return []  # nobody is told peers for this model here
        end = bisect_left(ring, place)
        if len(sources) - 1 < self.max_peers:
            return [(0, end), (bisect_right(ring, place), len(ring))]
        start = sources[(bisect_left(sources, place) - self.max_peers) % len(sources)]
        first = bisect_left(ring, start)
        return [(first, end)] if start < place else [(first, len(ring)), (0, end)]

    # --- what a node is told --------------------------------------------------------------------

    def peers(self, node: str, group: str, key: str) -> tuple[Peer, ...]:
        """The first `max_peers` sources clockwise after the node's place, sorted by name."""
        sources = self._sources.get((group, key))
        if not sources:
            return ()
        count = len(sources)
        start = bisect_right(sources, place_of(node, key))
        # A node that is a source itself comes last in its own walk: only when it is within reach
        # (no more sources than the cap) is it skipped, and then all the others are listed.
        steps = range(start, start + min(count, self.max_peers))
        chosen = [name for name in (sources[i % count][1] for i in steps) if name != node]
        return tuple(self._offers[name].peer for name in sorted(chosen))


__all__ = ["MAX_PEERS", "PeerIndex", "place_of"]
