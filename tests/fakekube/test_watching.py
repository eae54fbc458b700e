"""Watches on the fake API server, read with the real kubernetes_asyncio Watch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration

from tests.fakekube.fixtures import FakeKubeHandle, patch, write_kubeconfig
from tests.fakekube.resources import ApiError
from tests.fakekube.samples import CACHES, G, V, cache
from tests.fakekube.selectors import Selector
from tests.fakekube.server import FakeKube, start_fake_kube
from tests.fakekube.store import INITIAL_EVENTS_END, Store


async def next_event(stream: watch.Watch, within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        event: dict[str, Any] = await stream.__anext__()
    return event


def seen(event: dict[str, Any]) -> tuple[str, str, str]:
    meta = event["raw_object"]["metadata"]
    return event["type"], meta.get("name", ""), meta["resourceVersion"]


async def test_watch_without_version_lists_then_streams_live_events(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    fake_kube.create(CACHES, cache("b"))
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, timeout_seconds=30)
        assert [seen(await next_event(stream)) for _ in range(2)] == [
            ("ADDED", "a", "1"),
            ("ADDED", "b", "2"),
        ]
        await patch(crd, CACHES, "a", {"spec": {"modelSize": "2Gi"}})
        modified = await next_event(stream)
        assert seen(modified) == ("MODIFIED", "a", "3")
        assert modified["object"]["spec"]["modelSize"] == "2Gi"
        await crd.delete_cluster_custom_object(G, V, CACHES, "b")
        assert seen(await next_event(stream)) == ("DELETED", "b", "4")
        assert w.resource_version == "4"


async def test_watch_from_a_version_replays_history_with_each_state(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    fake_kube.create(CACHES, cache("b"))
    since = str(fake_kube.resource_version)
    fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "2Gi"}})
    fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "3Gi"}})
    fake_kube.delete(CACHES, "b")
    fake_kube.create(CACHES, cache("c"))
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})  # another resource: not seen

    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object, G, V, CACHES, resource_version=since, timeout_seconds=30
        )
        events = [await next_event(stream) for _ in range(4)]
        assert [seen(e) for e in events] == [
            ("MODIFIED", "a", "3"),
            ("MODIFIED", "a", "4"),
            ("DELETED", "b", "5"),
            ("ADDED", "c", "6"),
        ]
        assert [e["object"]["spec"]["modelSize"] for e in events[:2]] == ["2Gi", "3Gi"]
        fake_kube.create(CACHES, cache("d"))
        assert seen(await next_event(stream)) == ("ADDED", "d", "8"), "the node is not seen"


async def test_watch_from_compacted_history_gets_410_expired(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "2Gi"}})
    fake_kube.compact()

    # On the wire: a 200 stream holding one ERROR event with a 410 Status, then the end.
    response = await crd.list_cluster_custom_object(
        G, V, CACHES, watch=True, resource_version="1", _preload_content=False
    )
    try:
        assert response.status == 200
        async with asyncio.timeout(5):
            lines = (await response.read()).splitlines()
    finally:
        response.release()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert event["object"]["kind"] == "Status"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")

    # The client turns it into ApiException(410); watching forever, it retries once first.
    fake_kube.requests.clear()
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, resource_version="1")
        with pytest.raises(ApiException) as gone:
            await next_event(stream)
    assert gone.value.status == 410
    assert len(fake_kube.requests) == 2

    # From the compaction point on, watching works again.
    fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "3Gi"}})
    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object, G, V, CACHES, resource_version="2", timeout_seconds=30
        )
        assert seen(await next_event(stream)) == ("MODIFIED", "a", "3")


def test_a_bounded_history_expires_the_oldest_versions() -> None:
    store = Store(history_limit=2)
    spec = store.spec(CACHES)
    for name in ("a", "b", "c", "d"):
        store.create(spec, "", cache(name))
    with pytest.raises(ApiError) as gone:
        store.watch(spec, None, Selector(), resource_version="1", bookmarks=False)
    assert (gone.value.code, gone.value.reason) == (410, "Expired")
    watcher = store.watch(spec, None, Selector(), resource_version="2", bookmarks=False)
    replayed = [watcher.queue.get_nowait() for _ in range(watcher.queue.qsize())]
    names = [(e.type, e.object["metadata"]["name"]) for e in replayed if e is not None]
    assert names == [("ADDED", "c"), ("ADDED", "d")]


async def test_bookmarks_come_periodically_and_on_demand(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})
    fake_kube.bookmark_interval = 0.05
    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object,
            G,
            V,
            CACHES,
            resource_version="1",
            allow_watch_bookmarks=True,
            timeout_seconds=30,
        )
        bookmark = await next_event(stream)
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["raw_object"] == {
            "kind": "LocalModelCache",
            "apiVersion": f"{G}/{V}",
            "metadata": {"resourceVersion": "2"},
        }
        assert w.resource_version == "2"

        fake_kube.bookmark_interval = None
        await next_event(stream)  # the bookmark already due under the old interval
        fake_kube.create(CACHES, cache("b"))
        fake_kube.bookmark()
        assert seen(await next_event(stream)) == ("ADDED", "b", "3")
        assert seen(await next_event(stream)) == ("BOOKMARK", "", "3")


async def test_no_bookmarks_unless_allowed(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.bookmark_interval = 0.01
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, timeout_seconds=30)
        reader = asyncio.create_task(next_event(stream), name="watch-reader")
        await fake_kube.wait_for_watches(CACHES)
        await asyncio.sleep(0.1)  # ten bookmark intervals
        fake_kube.bookmark()
        fake_kube.create(CACHES, cache("a"))
        assert seen(await reader) == ("ADDED", "a", "1")


async def test_timeout_seconds_ends_the_stream(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, timeout_seconds=1)
        assert [event async for event in stream] == []
    assert 0.9 <= loop.time() - started < 3
    assert fake_kube.open_watches() == 0


async def test_label_selector_turns_transitions_into_added_and_deleted(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    fake_kube.create(CACHES, cache("other"))
    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object,
            G,
            V,
            CACHES,
            label_selector="tier=gold",
            resource_version=str(fake_kube.resource_version),
            timeout_seconds=30,
        )
        fake_kube.patch("localmodelcaches", "other", {"spec": {"modelSize": "9Gi"}})
        fake_kube.patch(CACHES, "a", {"metadata": {"labels": {"tier": "gold"}}})
        fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "2Gi"}})
        fake_kube.patch(CACHES, "a", {"metadata": {"labels": {"tier": None}}})
        assert seen(await next_event(stream)) == ("ADDED", "a", "4")
        assert seen(await next_event(stream)) == ("MODIFIED", "a", "5")
        left = await next_event(stream)
        # Leaving the selector reads as a deletion: the last matching state, new version.
        assert seen(left) == ("DELETED", "a", "6")
        assert left["object"]["metadata"]["labels"] == {"tier": "gold"}
        assert fake_kube.exists(CACHES, "a")


async def test_typed_watch_of_nodes(fake_kube: FakeKubeHandle, kube_api: ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1", "labels": {"gpu": "a100"}}})
    fake_kube.create("nodes", {"metadata": {"name": "cpu-1"}})
    async with watch.Watch() as w:
        stream = w.stream(core.list_node, label_selector="gpu", timeout_seconds=30)
        added = await next_event(stream)
        assert added["type"] == "ADDED"
        assert isinstance(added["object"], client.V1Node)
        assert added["object"].metadata.name == "gpu-1"
        await core.patch_node("gpu-1", {"spec": {"unschedulable": True}})
        modified = await next_event(stream)
        assert modified["object"].spec.unschedulable is True
        assert w.resource_version == modified["object"].metadata.resource_version


async def test_finalizers_show_as_modified_then_deleted(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    body = cache("a")
    body["metadata"]["finalizers"] = ["localmodel.kserve.io/finalizer"]
    fake_kube.create(CACHES, body)
    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object, G, V, CACHES, resource_version="1", timeout_seconds=30
        )
        await crd.delete_cluster_custom_object(G, V, CACHES, "a")
        marked = await next_event(stream)
        assert seen(marked) == ("MODIFIED", "a", "2")
        assert "deletionTimestamp" in marked["object"]["metadata"]
        await patch(crd, CACHES, "a", {"metadata": {"finalizers": []}})
        assert seen(await next_event(stream)) == ("DELETED", "a", "3")


async def test_a_no_op_write_sends_no_event(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    created = fake_kube.create(CACHES, cache("a"))
    async with watch.Watch() as w:
        stream = w.stream(
            crd.list_cluster_custom_object, G, V, CACHES, resource_version="1", timeout_seconds=30
        )
        same = await crd.replace_cluster_custom_object(G, V, CACHES, "a", created)
        assert same["metadata"]["resourceVersion"] == "1"
        fake_kube.patch(CACHES, "a", {"spec": {"modelSize": "5Gi"}})
        assert seen(await next_event(stream)) == ("MODIFIED", "a", "2")


async def test_send_initial_events_ends_with_an_annotated_bookmark(
    fake_kube: FakeKubeHandle, kube_api: ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})
    initial = core.list_node(
        watch=True,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        _preload_content=False,
    )
    response = cast(aiohttp.ClientResponse, await initial)
    try:
        events = [json.loads(await response.content.readline()) for _ in range(2)]
    finally:
        response.release()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}

    refused = cast(
        aiohttp.ClientResponse,
        await core.list_node(watch=True, send_initial_events=True, _preload_content=False),
    )
    try:
        assert refused.status == 422
        assert (await refused.json())["reason"] == "Invalid"
    finally:
        refused.release()


async def test_namespace_scopes_a_lease_watch(
    fake_kube: FakeKubeHandle, kube_api: ApiClient
) -> None:
    leases = client.CoordinationV1Api(kube_api)
    async with watch.Watch() as w:
        stream = w.stream(leases.list_namespaced_lease, "modelcache", timeout_seconds=30)
        reader = asyncio.create_task(next_event(stream), name="watch-reader")
        await fake_kube.wait_for_watches("leases")
        fake_kube.create("leases", {"metadata": {"name": "x", "namespace": "other"}})
        fake_kube.create("leases", {"metadata": {"name": "leader", "namespace": "modelcache"}})
        event = await reader
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "leader")


async def test_dropped_watches_end_and_the_client_resumes_from_its_version(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES)  # watches forever
        assert seen(await next_event(stream)) == ("ADDED", "a", "1")
        fake_kube.requests.clear()
        fake_kube.drop_watches()
        assert fake_kube.open_watches() == 0
        fake_kube.create(CACHES, cache("b"))  # after the drop: replayed on reconnection
        assert seen(await next_event(stream)) == ("ADDED", "b", "2")
    assert [r.query.get("resourceVersion") for r in fake_kube.requests] == ["1"]


async def test_a_departed_client_closes_its_watch(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    fake_kube.create(CACHES, cache("a"))
    async with watch.Watch() as w:
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, timeout_seconds=30)
        await next_event(stream)
        assert fake_kube.open_watches(CACHES) == 1
    async with asyncio.timeout(5):
        while fake_kube.open_watches(CACHES):
            await asyncio.sleep(0.01)


async def test_shutdown_ends_open_watches_promptly(tmp_path: Path) -> None:
    fake = FakeKube()
    runner, url = await start_fake_kube(fake, shutdown_timeout=30)
    configuration = Configuration()
    await config.load_kube_config(
        config_file=str(write_kubeconfig(tmp_path / "kubeconfig", url)),
        client_configuration=configuration,
    )
    async with ApiClient(configuration) as api, watch.Watch() as w:
        crd = client.CustomObjectsApi(api)
        stream = w.stream(crd.list_cluster_custom_object, G, V, CACHES, timeout_seconds=60)

        async def first_event() -> dict[str, Any] | None:
            return await anext(stream, None)

        reader = asyncio.create_task(first_event(), name="watch-reader")
        async with asyncio.timeout(5):
            while not fake.store.open_watches():
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await runner.cleanup()
        assert loop.time() - started < 2, "shutdown waited for the watch handler"
        async with asyncio.timeout(5):
            assert await reader is None, "the stream ended without an event"
