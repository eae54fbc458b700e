"""Each node's desired list names its peers per model, and the group's peer token, over real HTTP:
who is listed, when the generation moves (and when it must not), the cap, the switch annotation,
and what a coordinator that took over knows of its agents' addresses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modelcache.contract.agent_wire import (
    Disk,
    ModelReport,
    Peer,
    Registration,
    StatusReport,
    parse_desired,
)
from modelcache.contract.objects import PEER_FETCH_ANNOTATION
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.admission_view import RegistryAdmissionView
from modelcache.coordinator.binding import admit_cache
from modelcache.coordinator.peering import MAX_PEERS
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.restoring import restore_from_node_object
from tests.coordinator.conftest import Api, GiB, cache, node_group

LLAMA = "hf://meta-llama/meta-llama-3-8b-instruct"
PHI = "hf://microsoft/phi-3"
FIELD = f"metadata.annotations[{PEER_FETCH_ANNOTATION}]"


def peers(desired: dict[str, Any], uri: str) -> list[str]:
    (model,) = [m for m in desired["models"] if m["storageKey"] == storage_key(uri)]
    return [p["node"] for p in model.get("peers", [])]


def annotated(obj: dict[str, Any], value: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "annotations": {PEER_FETCH_ANNOTATION: value}}}


async def report_bytes(api: Api, node: str, uri: str, state: str, done: int) -> None:
    body = {
        "disk": {"capacityBytes": 200 * GiB, "freeBytes": 100 * GiB},
        "models": [{"storageKey": storage_key(uri), "state": state, "bytesDone": done}],
    }
    await api.call("POST", f"/v1/agents/{node}/status", 204, json=body)


async def generations(api: Api, nodes: list[str]) -> dict[str, int]:
    return {n: (await api.desired(n))["generation"] for n in nodes}


async def _cluster(api: Api) -> None:
    await api.put(node_group("a100", "80Gi"))
    await api.put(node_group("h100", "80Gi"))
    await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
    await api.put(cache("phi", PHI, "8Gi", "a100"))
    for node in ("a0", "a1", "a2", "a3"):
        await api.register(node, "a100")
    await api.register("h0", "h100")


async def test_peers_are_the_other_ready_nodes_of_the_group_given_the_model(api: Api) -> None:
    await _cluster(api)
    await api.report("a0", {LLAMA: "ModelDownloaded", PHI: "ModelDownloading"})
    await api.report("a1", {LLAMA: "ModelDownloading"})
    await api.report("a2", {LLAMA: "ModelDownloadPending"})
    await api.report("a3", {LLAMA: "ModelDownloadError"})  # told to hold it: it will retry
    await api.report("h0", {LLAMA: "ModelDownloaded"})  # another group: never a peer of a100's
    await api.settle()  # peers are published once per reconcile tick
    waiting = await api.desired("a2")
    assert peers(waiting, LLAMA) == ["a0", "a1", "a3"]
    assert peers(waiting, PHI) == ["a0", "a1", "a3"]  # before any of them reports it
    llama = next(m for m in waiting["models"] if m["storageKey"] == storage_key(LLAMA))
    assert llama["peers"][:2] == [
        {"node": "a0", "url": "http://a0:9090"},
        {"node": "a1", "url": "http://a1:9090"},
    ]
    assert peers(await api.desired("a0"), LLAMA) == ["a1", "a2", "a3"]  # never itself
    h100 = await api.desired("h0")
    assert "peers" not in h100["models"][0]  # the contract's shape: absent when there are none
    # What the agent parses: the contract's own reader accepts it as it is.
    parsed = parse_desired(waiting).models[storage_key(LLAMA)]
    assert [p.node for p in parsed.peers] == ["a0", "a1", "a3"]
    assert parsed.peers[0] == Peer("a0", "http://a0:9090")


async def test_a_node_without_a_usable_address_is_nobodys_peer(api: Api) -> None:
    await _cluster(api)
    disk = {"capacityBytes": 200 * GiB, "freeBytes": 100 * GiB}
    for node, address in (("a0", ""), ("a1", "a1:9090"), ("a2", "https://a2:9443/")):
        body = {"nodeGroup": "a100", "address": address, "disk": disk}
        await api.call("POST", f"/v1/agents/{node}/register", json=body)
        await api.report(node, {LLAMA: "ModelDownloaded"})
    await api.settle()
    # An agent refuses a whole list with a peer URL it cannot use: such nodes are left out.
    llama = next(m for m in (await api.desired("a3"))["models"] if m["caches"] == ["llama3"])
    assert llama["peers"] == [{"node": "a2", "url": "https://a2:9443"}]


async def test_a_node_joining_moves_the_generation_and_wakes_the_long_poll(api: Api) -> None:
    await _cluster(api)
    for node in ("a0", "a1", "a2", "a3", "h0"):
        await api.report(node, {})
    await api.settle()
    first = await api.desired("a0")
    assert peers(first, LLAMA) == ["a1", "a2", "a3"]
    poll = asyncio.create_task(api.desired("a0", first["generation"], wait=5))
    await asyncio.sleep(0.1)
    assert not poll.done()
    await api.register("a4", "a100")
    await api.report("a4", {})
    woken = await asyncio.wait_for(poll, 2)  # at the next reconcile tick (50 ms here)
    assert woken["generation"] > first["generation"]
    assert peers(woken, LLAMA) == peers(woken, PHI) == ["a1", "a2", "a3", "a4"]


async def test_reports_move_no_generation_while_the_group_stays_the_same(api: Api) -> None:
    """Starting, progressing, finishing or failing a pull changes nobody's peers: a node's list
    follows the group's membership (and placement), not its members' downloads."""
    await _cluster(api)
    await report_bytes(api, "a1", LLAMA, "ModelDownloading", 1)
    for node in ("a0", "a2", "a3", "h0"):
        await api.report(node, {})
    await api.settle()
    others = ["a0", "a2", "a3", "h0"]
    before = await generations(api, others)
    poll = asyncio.create_task(api.desired("a0", before["a0"], wait=1))
    started = time.monotonic()
    await report_bytes(api, "a1", LLAMA, "ModelDownloading", 2)  # more bytes
    await api.report("h0", {LLAMA: "ModelDownloading"})  # another group
    await api.report("a2", {LLAMA: "ModelDownloadPending"})
    await api.report("a3", {LLAMA: "ModelDownloadError"})
    for _ in range(4):  # heartbeats (0.6 s timeout) while the poll waits out its second
        await asyncio.sleep(0.2)
        await report_bytes(api, "a1", LLAMA, "ModelDownloaded", 10)
        for node in ("a0", "a2", "a3", "h0"):
            await api.report(node, {})
    unchanged = await poll
    assert unchanged["generation"] == before["a0"]
    assert time.monotonic() - started > 0.9
    assert await generations(api, others) == before
    assert peers(unchanged, LLAMA) == ["a1", "a2", "a3"]


async def test_a_peer_that_leaves_or_falls_silent_is_taken_off_the_lists(api: Api) -> None:
    await api.put(node_group("a100", "80Gi"))
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    for node in ("a0", "a1", "a2"):
        await api.register(node, "a100")
        await api.report(node, {})
    await api.settle()
    seen = await api.desired("a0")
    assert peers(seen, LLAMA) == ["a1", "a2"]

    await api.call("DELETE", "/v1/agents/a2", expect=204)
    gone = await api.desired("a0", seen["generation"], wait=1)
    assert gone["generation"] > seen["generation"]
    assert peers(gone, LLAMA) == ["a1"]

    # a1 falls silent past the heartbeat timeout (0.6 s) while a0 keeps reporting.
    for _ in range(10):
        await asyncio.sleep(0.1)
        await api.report("a0", {})
    assert peers(await api.desired("a0"), LLAMA) == []
    await api.report("a1", {LLAMA: "ModelDownloaded"})  # back
    await api.settle()
    assert peers(await api.desired("a0"), LLAMA) == ["a1"]


async def test_a_node_registering_late_joins_the_lists(api: Api) -> None:
    await _cluster(api)
    await api.report("a0", {})
    await api.settle()
    seen = await api.desired("a0")
    poll = asyncio.create_task(api.desired("a0", seen["generation"], wait=5))
    await api.register("a9", "a100")
    await api.report("a9", {})
    woken = await asyncio.wait_for(poll, 2)
    assert "a9" in peers(woken, LLAMA)
    assert "a9" in peers(woken, PHI)


async def test_many_sources_give_each_node_its_own_capped_subset(api: Api) -> None:
    await api.put(node_group("big", "80Gi"))
    await api.put(cache("llama3", LLAMA, "16Gi", "big"))
    nodes = [f"gpu-{i:02d}" for i in range(MAX_PEERS + 16)]
    for node in nodes:
        await api.register(node, "big")
        await api.report(node, {LLAMA: "ModelDownloading"})
    await api.settle()
    lists = {n: peers(await api.desired(n), LLAMA) for n in nodes}
    for node, listed in lists.items():
        assert len(listed) == MAX_PEERS
        assert node not in listed
        assert listed == sorted(listed)
    assert len({tuple(listed) for listed in lists.values()}) > len(nodes) // 2
    everyone_listed = {peer for listed in lists.values() for peer in listed}
    assert everyone_listed == set(nodes)
    assert {n: peers(await api.desired(n), LLAMA) for n in nodes} == lists  # stable

    before = await generations(api, nodes)
    await api.register("gpu-new", "big")
    await api.report("gpu-new", {LLAMA: "ModelDownloading"})
    await api.settle()
    after = {n: await api.desired(n) for n in nodes}
    moved = {n for n in nodes if after[n]["generation"] != before[n]}
    listing_new = {n for n in nodes if "gpu-new" in peers(after[n], LLAMA)}
    assert moved == listing_new  # exactly the lists that changed
    assert 0 < len(moved) < len(nodes)


async def test_the_annotation_turns_peers_off_for_a_cache_or_a_whole_group(api: Api) -> None:
    await _cluster(api)
    for node in ("a0", "a1", "a2", "a3"):
        await api.report(node, {})
    await api.settle()
    everyone = ["a0", "a2", "a3"]
    seen = await api.desired("a1")
    assert (peers(seen, LLAMA), peers(seen, PHI)) == (everyone, everyone)

    off = await api.put(annotated(cache("llama3", LLAMA, "16Gi", "a100", "h100"), "false"))
    assert off["metadata"]["annotations"] == {PEER_FETCH_ANNOTATION: "false"}
    turned_off = await api.desired("a1", seen["generation"], wait=1)
    assert turned_off["generation"] > seen["generation"]
    assert (peers(turned_off, LLAMA), peers(turned_off, PHI)) == ([], everyone)
    await api.report("a2", {LLAMA: "ModelDownloading"})  # nothing to tell of: no new list
    await api.settle()
    assert (await api.desired("a1"))["generation"] == turned_off["generation"]

    await api.put(annotated(cache("llama3", LLAMA, "16Gi", "a100", "h100"), "true"))
    back = await api.desired("a1", turned_off["generation"], wait=1)
    assert (peers(back, LLAMA), peers(back, PHI)) == (everyone, everyone)

    await api.put(annotated(node_group("a100", "80Gi"), "false"))
    group_off = await api.desired("a1", back["generation"], wait=1)
    assert (peers(group_off, LLAMA), peers(group_off, PHI)) == ([], [])
    assert "peerToken" in group_off  # it still answers peers that ask it


async def test_one_cache_off_turns_peers_off_for_the_files_it_shares(api: Api) -> None:
    await _cluster(api)
    await api.report("a0", {LLAMA: "ModelDownloaded"})
    await api.put(annotated(cache("llama3-copy", LLAMA, "16Gi", "a100"), "false"))
    await api.settle()
    model = (await api.desired("a1"))["models"][0]
    assert model["caches"] == ["llama3", "llama3-copy"]
    assert "peers" not in model


async def test_an_annotation_that_is_not_true_or_false_is_refused_naming_it(api: Api) -> None:
    for obj in (cache("llama3", LLAMA, "16Gi", "a100"), node_group("a100", "80Gi")):
        refused = await api.put(annotated(obj, "yes"), expect=422)
        assert refused["field"] == FIELD
        assert refused["error"] == 'must be "true" or "false", got \'yes\''
    # The admission webhook checks caches with the same parser.
    raw = annotated(cache("llama3", LLAMA, "16Gi", "a100"), "off")
    verdict = admit_cache(
        "CREATE", raw, None, "llama3", RegistryAdmissionView(api.coordinator.registry)
    )
    assert not verdict.allowed
    assert verdict.code == 422
    assert FIELD in verdict.message


async def test_the_peer_token_is_the_groups(api: Api) -> None:
    await _cluster(api)
    await api.register("loner", None)
    tokens = {n: (await api.desired(n)).get("peerToken") for n in ("a0", "a1", "h0", "loner")}
    assert tokens["a0"] == tokens["a1"]
    assert tokens["h0"] != tokens["a0"]
    assert len(str(tokens["a0"])) == 64  # hex sha256
    assert tokens["loner"] is None
    assert "peerToken" not in await api.desired("loner")


async def test_a_node_restored_from_the_store_is_listed_again_once_its_agent_registers(
    api: Api,
) -> None:
    """A coordinator that takes over knows each node from its LocalModelNode, without its agent's
    address: the node is nobody's peer until its agent registers, which its next poll asks for."""
    await api.put(node_group("a100", "80Gi"))
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    for node in ("a0", "a1"):
        await api.register(node, "a100")
    await api.report("a0", {LLAMA: "ModelDownloaded"})
    await api.report("a1", {})
    await api.settle()
    registry = api.coordinator.registry
    written = registry.node_object("a0")
    registry.forget_node("a0")
    assert restore_from_node_object(registry, written)  # as a new leader's load does
    assert registry.nodes["a0"].registration is not None
    assert registry.nodes["a0"].registration.address == ""
    await api.settle()

    seen = await api.desired("a1")
    assert peers(seen, LLAMA) == []  # no address to give
    await api.report("a0", {LLAMA: "ModelDownloaded"})  # its reports are taken meanwhile
    refused = await api.desired("a0", expect=404)
    assert "POST its registration" in refused["error"]  # what makes the agent register

    await api.register("a0", "a100")
    back = await api.desired("a1", seen["generation"], wait=1)
    assert peers(back, LLAMA) == ["a0"]
    assert (await api.desired("a0"))["models"]


def test_peers_change_at_publishing_once_and_never_under_the_same_generation() -> None:
    """Between two reconcile ticks a node's peers stay as they are, so a generation always means
    one content; at the tick, many nodes joining make one new generation, not one each."""
    registry = Registry(heartbeat_timeout=30, not_ready_deletion_timeout=600)
    registry.upsert_group(node_group("a100", "80Gi"))
    registry.upsert_cache(cache("llama3", LLAMA, "16Gi", "a100"))
    disk = Disk(200 * GiB, 100 * GiB)
    registry.register("a0", Registration("a100", "http://a0:9090", disk))
    registry.report("a0", StatusReport(disk, {}), 0)
    registry.publish_peers()
    a0 = registry.nodes["a0"]
    (model,) = a0.desired
    generation = a0.generation
    for node in ("a1", "a2", "a3"):
        registry.register(node, Registration("a100", f"http://{node}:9090", disk))
        registry.report(node, StatusReport(disk, {}), 0)
    assert (a0.generation, registry.peers_for(a0, model)) == (generation, ())
    registry.publish_peers()
    assert a0.generation == generation + 1
    assert [p.node for p in registry.peers_for(a0, model)] == ["a1", "a2", "a3"]
    pulling = ModelReport(storage_key(LLAMA), "ModelDownloading", 1, 10, 0.0, "", "", None, None)
    for node in ("a1", "a2", "a3"):
        registry.report(node, StatusReport(disk, {pulling.storage_key: pulling}), 1)
    registry.publish_peers()  # downloads starting change nobody's peers
    assert a0.generation == generation + 1


def test_the_list_that_first_names_a_model_names_its_peers() -> None:
    """Nodes given a model together must know each other from their first list, or each starts
    fetching every chunk from the origin before the next reconcile tick tells them."""
    registry = Registry(heartbeat_timeout=30, not_ready_deletion_timeout=600)
    registry.upsert_group(node_group("a100", "80Gi"))
    disk = Disk(200 * GiB, 100 * GiB)
    for node in ("a0", "a1"):
        registry.register(node, Registration("a100", f"http://{node}:9090", disk))
        registry.report(node, StatusReport(disk, {}), 0)
    registry.publish_peers()
    registry.upsert_cache(cache("llama3", LLAMA, "16Gi", "a100"))  # no tick in between
    a0 = registry.nodes["a0"]
    (model,) = a0.desired
    assert [p.node for p in registry.peers_for(a0, model)] == ["a1"]
