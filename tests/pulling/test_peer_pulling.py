"""Pulls that copy chunks from peers: fewer origin bytes, never a corrupt publish, never a stall."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from modelcache.contract.agent_wire import Peer
from modelcache.origin.repos import load_file
from modelcache.pulling import PullSettings, pull
from modelcache.pulling.manifests import read_manifest
from modelcache.pulling.peering import ChunkBoard, PeerGroup, board_for_published
from modelcache.pulling.planning import plan_chunks
from modelcache.pulling.staging import StagingPaths
from tests.hub_origin import FAST, REPO_FILES, HubFixture, tree_of
from tests.pulling.fake_peers import TOKEN, FakePeer, serving

KEY = "0123456789abcdef"
PEERED = dataclasses.replace(FAST, chunk_size=64 * 1024, peer_settle=0.3, peer_stall_timeout=0.5)
MODEL_BYTES = sum(REPO_FILES.values())


def group(me: str, *peers: Peer) -> PeerGroup:
    return PeerGroup(KEY, me, peers, TOKEN)


async def pull_as(
    hub: HubFixture,
    dest: Path,
    me: str,
    peers: list[Peer],
    board: ChunkBoard | None = None,
    settings: PullSettings = PEERED,
) -> tuple[int, int]:
    """(origin bytes sent during this pull, bytes the pull took from peers)"""
    before = hub.data_bytes_sent()
    result = await pull(
        "hf://acme/tiny-model",
        dest,
        settings=settings,
        credentials=hub.credentials,
        peers=group(me, *peers),
        board=board if board is not None else ChunkBoard(),
    )
    assert tree_of(dest) == tree_of(hub.source_dir)
    return hub.data_bytes_sent() - before, result.peer_bytes


async def copy_from_holder(hub: HubFixture, tmp_path: Path, holder: FakePeer) -> tuple[int, int]:
    """`holder` pulls alone and serves its board; then node-b pulls with it as its one peer."""
    async with serving(holder):
        holder.boards[KEY] = ChunkBoard()
        await pull_as(hub, tmp_path / "a", holder.node, [], holder.boards[KEY])
        return await pull_as(hub, tmp_path / "b", "node-b", [holder.peer])


async def test_a_second_node_copies_everything_hashed_from_a_node_that_has_it(
    hub: HubFixture, tmp_path: Path
) -> None:
    first = FakePeer("node-a")
    async with serving(first):
        board = first.boards[KEY] = ChunkBoard()
        origin_bytes, _ = await pull_as(hub, tmp_path / "a", "node-a", [], board)
        assert origin_bytes == MODEL_BYTES
        assert board.complete
        assert board.root == tmp_path / "a"
        manifest = read_manifest(StagingPaths(tmp_path / "a").manifest)
        assert manifest is not None
        assert manifest.chunk_size == PEERED.chunk_size
        plan = plan_chunks([f.size for f in manifest.files], PEERED.chunk_size)
        assert [len(f.chunk_digests) for f in manifest.files] == [len(p) for p in plan]

        origin_bytes, peer_bytes = await pull_as(hub, tmp_path / "b", "node-b", [first.peer])
    # config.json and the tokenizer are small, but chunked and hashed like the rest.
    assert origin_bytes == 0
    assert peer_bytes == MODEL_BYTES == first.bytes_served
    again = board_for_published(tmp_path / "b")
    assert again is not None
    assert again.complete
    assert set(again.snapshot(0).records) == set(board.snapshot(0).records)


async def test_nodes_starting_together_share_the_origin_s_bytes(
    hub: HubFixture, tmp_path: Path
) -> None:
    peers = [FakePeer(f"node-{i}") for i in range(4)]
    for peer in peers:
        peer.boards[KEY] = ChunkBoard()
    async with serving(peers[0]), serving(peers[1]), serving(peers[2]), serving(peers[3]):
        results = await asyncio.gather(
            *(
                pull_as(
                    hub,
                    tmp_path / p.node,
                    p.node,
                    [q.peer for q in peers if q is not p],
                    p.boards[KEY],
                )
                for p in peers
            )
        )
    origin_total = hub.data_bytes_sent()
    # Alone, four nodes take 4x the model from the origin; together about once.
    assert origin_total <= 1.25 * MODEL_BYTES, (origin_total, MODEL_BYTES)
    assert sum(peer_bytes for _, peer_bytes in results) >= 2.5 * MODEL_BYTES


async def test_corrupt_copies_are_discarded_and_the_peer_is_avoided(
    hub: HubFixture, tmp_path: Path
) -> None:
    liar = FakePeer("node-a", corrupt=True)
    origin_bytes, peer_bytes = await copy_from_holder(hub, tmp_path, liar)
    # The first bad chunk marks it: no request after the ones already in flight then.
    assert 1 <= liar.ranges_served <= PEERED.peers_per_chunk_request
    assert peer_bytes == liar.bytes_served
    assert origin_bytes == MODEL_BYTES


async def test_a_peer_lying_about_digests_never_makes_a_corrupt_publish(
    hub: HubFixture, tmp_path: Path
) -> None:
    origin_bytes, _ = await copy_from_holder(hub, tmp_path, FakePeer("node-a", lie=True))
    # Its chunks matched its own (false) digests; the files' sha256 from the Hub did not, so
    # they were fetched again from the origin. pull_as compared every byte with the source.
    assert origin_bytes >= REPO_FILES["model-00001-of-00002.safetensors"]


async def test_a_dead_or_stalling_peer_costs_seconds_not_the_pull(
    hub: HubFixture, tmp_path: Path
) -> None:
    staller = FakePeer("node-a", stall=True)
    async with serving(staller):
        staller.boards[KEY] = ChunkBoard()
        await pull_as(hub, tmp_path / "a", "node-a", [], staller.boards[KEY])
        dead = Peer("node-dead", "http://127.0.0.1:9")  # nothing listens on the discard port
        started = time.monotonic()
        origin_bytes, peer_bytes = await pull_as(
            hub, tmp_path / "b", "node-b", [staller.peer, dead]
        )
        took = time.monotonic() - started
    assert peer_bytes == 0
    assert origin_bytes == MODEL_BYTES
    assert staller.ranges_served >= 1
    assert took < 10, took


async def test_peers_on_another_revision_or_token_are_not_used(
    hub: HubFixture, tmp_path: Path
) -> None:
    other = FakePeer("node-a")
    async with serving(other):
        other.boards[KEY] = ChunkBoard()
        await pull_as(hub, tmp_path / "a", "node-a", [], other.boards[KEY])
        hub.commit("config.json", b'{"changed": true}')
        origin_bytes, peer_bytes = await pull_as(hub, tmp_path / "b", "node-b", [other.peer])
    assert peer_bytes == 0
    assert origin_bytes == sum(f.stat().st_size for f in (tmp_path / "b").rglob("*") if f.is_file())


async def test_a_file_without_a_digest_from_the_source_never_comes_from_a_peer(
    hub: HubFixture, tmp_path: Path
) -> None:
    """Only the source's digest can catch a peer whose chunk digests lie along with its bytes."""
    blob = hub.source_dir / "model-00001-of-00002.safetensors"
    hub.origin.plain_files["weights.bin"] = load_file("weights.bin", blob)
    uri = f"{hub.url}/files/weights.bin"
    liar = FakePeer("node-a", lie=True)
    async with serving(liar):
        liar.boards[KEY] = ChunkBoard()
        await pull(
            uri,
            tmp_path / "a",
            settings=PEERED,
            credentials=hub.credentials,
            peers=group("node-a"),
            board=liar.boards[KEY],
        )
        assert liar.boards[KEY].complete
        before = hub.data_bytes_sent()
        result = await pull(
            uri,
            tmp_path / "b",
            settings=PEERED,
            credentials=hub.credentials,
            peers=group("node-b", liar.peer),
            board=ChunkBoard(),
        )
    assert tree_of(tmp_path / "b") == {"weights.bin": blob.read_bytes()}
    assert (result.peer_bytes, liar.ranges_served) == (0, 0)
    assert hub.data_bytes_sent() - before == blob.stat().st_size
