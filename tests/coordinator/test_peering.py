"""The peer index on its own: every change answers exactly the nodes whose lists it changed, and
the lists are what the ring says (a small cap, so wrapping around the ring happens often)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from modelcache.coordinator.peering import MAX_PEERS, PeerIndex, place_of

NODES = [f"n{i}" for i in range(12)]
GROUPS = ["a", "b"]
KEYS = ["k0", "k1", "k2"]
WANTED = {"a": ["k0", "k1"], "b": ["k0"]}  # k2 is served but wanted nowhere; b never wants k1


@dataclass(frozen=True)
class Offer:
    node: str
    group: str | None
    url: str
    keys: frozenset[str]


@dataclass(frozen=True)
class Forget:
    node: str


# Mostly one group, one URL and one model, so the lists fill up past the cap and wrap around.
offers = st.builds(
    Offer,
    st.sampled_from(NODES),
    st.sampled_from(["a", "a", "a", "b", None]),
    st.sampled_from(["http://x:9090", "http://x:9090", "http://y:9090", ""]),
    st.frozensets(st.sampled_from(["k0", "k0", "k0", *KEYS])),
)
operations = st.one_of(offers, offers, offers, st.builds(Forget, st.sampled_from(NODES)))


def lists(index: PeerIndex, group_of: dict[str, str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """Every listening node's peers (with their URLs) for every model its group wants."""
    return {
        (node, key): tuple(f"{p.node}@{p.url}" for p in index.peers(node, group, key))
        for node, group in group_of.items()
        for key in WANTED.get(group, ())
    }


def check(
    index: PeerIndex,
    group_of: dict[str, str],
    served: dict[str, Offer],
    cap: int,
    before: dict[tuple[str, str], tuple[str, ...]],
    changed: set[str],
    regrouped: set[str],
) -> None:
    after = lists(index, group_of)
    differ = {node for (node, key), peers in after.items() if before.get((node, key)) != peers}
    # A node that moved to another group gets a new desired list anyway (the registry's doing).
    assert changed - regrouped == differ - regrouped
    for (node, key), peers in after.items():
        group = group_of[node]
        sources = {
            o.node
            for o in served.values()
            if o.group == group and o.url and key in o.keys and o.node != node
        }
        names = [p.partition("@")[0] for p in peers]
        assert names == sorted(names)
        assert set(names) <= sources
        assert len(names) == min(cap, len(sources))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(operations, min_size=1, max_size=4), max_size=25), st.integers(1, 3))
def test_a_batch_of_changes_answers_exactly_the_nodes_whose_peers_it_changed(
    batches: list[list[Offer | Forget]], cap: int
) -> None:
    """As the registry drives it: a node's group changes at once, a forgotten node is withdrawn
    at once, what nodes serve is published in one batch per tick."""
    index = PeerIndex(max_peers=cap)
    index.watch(WANTED)
    group_of: dict[str, str] = {}
    served: dict[str, Offer] = {}
    for batch in batches:
        offers: dict[str, tuple[str | None, str, frozenset[str]]] = {}
        regrouped: set[str] = set()
        pending: dict[str, Offer] = {}
        for op in batch:
            if isinstance(op, Forget):
                before = lists(index, group_of)
                changed = index.forget(op.node)
                offers.pop(op.node, None)
                pending.pop(op.node, None)
                group_of.pop(op.node, None)
                served.pop(op.node, None)
                check(index, group_of, served, cap, before, changed, {op.node})
                continue
            if group_of.get(op.node) != op.group:
                regrouped.add(op.node)
            index.set_group(op.node, op.group)
            if op.group is None:
                group_of.pop(op.node, None)
            else:
                group_of[op.node] = op.group
            offers[op.node] = (op.group, op.url, op.keys)
            pending[op.node] = op
        before = lists(index, group_of)
        changed = index.publish(offers)
        served.update(pending)
        check(index, group_of, served, cap, before, changed, regrouped)


def test_the_chosen_peers_follow_the_node_on_the_ring() -> None:
    index = PeerIndex(max_peers=3)
    index.watch({"a": ["k"]})
    nodes = [f"n{i}" for i in range(10)]
    for node in nodes:
        index.set_group(node, "a")
        index.publish({node: ("a", f"http://{node}:9090", frozenset({"k"}))})
    ring = sorted(nodes, key=lambda n: place_of(n, "k"))
    for position, node in enumerate(ring):
        following = [ring[(position + step) % len(ring)] for step in (1, 2, 3)]
        assert [p.node for p in index.peers(node, "a", "k")] == sorted(following)
        assert [p.url for p in index.peers(node, "a", "k")] == [
            f"http://{n}:9090" for n in sorted(following)
        ]


def test_with_many_sources_each_change_touches_about_cap_times_nodes_over_sources() -> None:
    """What keeps a rollout cheap: the 1,001st source changes some 32 lists, not 1,000."""
    index = PeerIndex()
    index.watch({"a": ["k"]})
    nodes = [f"gpu-{i}" for i in range(1001)]
    for node in nodes:
        index.set_group(node, "a")
    for node in nodes[:-1]:
        index.publish({node: ("a", f"http://{node}:9090", frozenset({"k"}))})
    changed = index.publish({nodes[-1]: ("a", "http://last:9090", frozenset({"k"}))})
    assert 0 < len(changed) < 4 * MAX_PEERS
    assert all(any(p.node == nodes[-1] for p in index.peers(n, "a", "k")) for n in changed)
    # Serving is spread out: every source is some node's peer, none is everybody's.
    served = [0] * len(nodes)
    position = {n: i for i, n in enumerate(nodes)}
    for node in nodes:
        for peer in index.peers(node, "a", "k"):
            served[position[peer.node]] += 1
    assert min(served) > 0
    assert max(served) < 4 * MAX_PEERS
    # Unchanged: more bytes done is the same offer.
    same = index.publish({nodes[-1]: ("a", "http://last:9090", frozenset({"k"}))})
    assert same == set()
