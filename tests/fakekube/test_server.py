"""The fake API server through the real kubernetes_asyncio client: create, read, list, errors,
leases, discovery and the fixture's own helpers."""

from __future__ import annotations

import json
import re
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient, ApiException

from tests.fakekube.fixtures import FakeKubeHandle
from tests.fakekube.resources import ApiError
from tests.fakekube.samples import CACHES, GROUPS, RFC3339_Z, G, V, cache, status_of


async def test_create_fills_server_metadata_and_drops_status(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    body = {**cache("llama"), "status": {"copies": {"available": 3}}}
    created = await crd.create_cluster_custom_object(G, V, CACHES, body)

    meta = created["metadata"]
    assert meta["resourceVersion"] == "1"
    assert meta["generation"] == 1
    assert RFC3339_Z.match(meta["creationTimestamp"])
    assert len(meta["uid"]) == 36
    assert "status" not in created, "a status subresource drops status on create"
    assert fake_kube.get(CACHES, "llama") == created
    # One resourceVersion counter for every resource, as etcd's revision.
    node = await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="gpu-1")))
    assert node.metadata.resource_version == "2"
    assert node.metadata.generation is None, "built-in nodes carry no generation"
    assert fake_kube.resource_version == 2


async def test_node_keeps_status_given_on_create(core: client.CoreV1Api) -> None:
    status = client.V1NodeStatus(capacity={"nvidia.com/gpu": "8"})
    node = client.V1Node(metadata=client.V1ObjectMeta(name="gpu-1"), status=status)
    created = await core.create_node(node)
    assert created.status.capacity == {"nvidia.com/gpu": "8"}


async def test_errors_are_status_objects(crd: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as missing:
        await crd.get_cluster_custom_object(G, V, CACHES, "absent")
    assert missing.value.status == 404
    assert status_of(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'localmodelcaches.serving.kserve.io "absent" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"group": G, "kind": CACHES, "name": "absent"},
    }

    await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    with pytest.raises(ApiException) as twice:
        await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    assert (twice.value.status, status_of(twice.value)["reason"]) == (409, "AlreadyExists")

    with pytest.raises(ApiException) as unknown_path:
        await crd.get_cluster_custom_object(G, V, "inferenceservices", "x")
    assert status_of(unknown_path.value)["reason"] == "NotFound"


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        ({"kind": None}, 400, "BadRequest"),  # custom resources need kind and apiVersion
        ({"kind": "LocalModelNode"}, 400, "BadRequest"),
        ({"metadata": {"name": "Llama_3"}}, 422, "Invalid"),
        ({"metadata": {"name": None}}, 422, "Invalid"),
        ({"metadata": {"name": "x", "resourceVersion": "7"}}, 500, "InternalError"),
    ],
)
async def test_create_refuses_what_the_real_server_refuses(
    crd: client.CustomObjectsApi, change: dict[str, Any], code: int, reason: str
) -> None:
    body = {**cache("llama"), **change}
    body = {k: v for k, v in body.items() if v is not None}
    body["metadata"] = {k: v for k, v in body["metadata"].items() if v is not None}
    with pytest.raises(ApiException) as refused:
        await crd.create_cluster_custom_object(G, V, CACHES, body)
    assert (refused.value.status, status_of(refused.value)["reason"]) == (code, reason)


async def test_generate_name(crd: client.CustomObjectsApi) -> None:
    body = cache("unused")
    body["metadata"] = {"generateName": "llama-"}
    created = await crd.create_cluster_custom_object(G, V, CACHES, body)
    assert re.fullmatch(r"llama-[a-z0-9]{5}", created["metadata"]["name"])


async def test_list_filters_by_label_and_field_selectors(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    await crd.create_cluster_custom_object(G, V, CACHES, cache("a", {"tier": "gold", "z": "1"}))
    await crd.create_cluster_custom_object(G, V, CACHES, cache("b", {"tier": "silver"}))
    await crd.create_cluster_custom_object(G, V, CACHES, cache("c"))
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})  # moves the global version on

    async def names(label_selector: str = "", field_selector: str = "") -> list[str]:
        listed = await crd.list_cluster_custom_object(
            G, V, CACHES, label_selector=label_selector, field_selector=field_selector
        )
        assert listed["kind"] == "LocalModelCacheList"
        assert listed["apiVersion"] == f"{G}/{V}"
        assert listed["metadata"]["resourceVersion"] == "4"
        return [item["metadata"]["name"] for item in listed["items"]]

    assert await names() == ["a", "b", "c"]
    assert await names(label_selector="tier") == ["a", "b"]
    assert await names(label_selector="!tier") == ["c"]
    assert await names(label_selector="tier=gold") == ["a"]
    assert await names(label_selector="tier==gold") == ["a"]
    assert await names(label_selector="tier!=gold") == ["b", "c"]
    assert await names(label_selector="tier=gold,z=1") == ["a"]
    assert await names(label_selector="tier=gold,z=2") == []
    assert await names(label_selector="tier in (gold, silver)") == ["a", "b"]
    assert await names(label_selector="tier notin (gold)") == ["b", "c"]
    assert await names(field_selector="metadata.name=b") == ["b"]
    assert await names(field_selector="metadata.name!=b", label_selector="tier") == ["a"]
    with pytest.raises(ApiException) as bad:
        await names(label_selector="tier=(")
    assert bad.value.status == 400
    with pytest.raises(ApiException) as unknown_field:
        await names(field_selector="spec.nodeGroups=a100")
    assert unknown_field.value.status == 400


async def test_built_in_list_items_carry_no_kind(
    fake_kube: FakeKubeHandle, core: client.CoreV1Api
) -> None:
    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})
    # Unparsed, the client hands back the aiohttp response; its stubs say otherwise.
    response = cast(aiohttp.ClientResponse, await core.list_node(_preload_content=False))
    try:
        listed = json.loads(await response.read())
    finally:
        response.release()
    assert listed["kind"] == "NodeList"
    assert listed["items"][0]["metadata"]["name"] == "gpu-1"
    assert "kind" not in listed["items"][0]


async def test_leases_are_namespaced(fake_kube: FakeKubeHandle, kube_api: ApiClient) -> None:
    leases = client.CoordinationV1Api(kube_api)
    spec = client.V1LeaseSpec(holder_identity="coordinator-0", lease_duration_seconds=15)
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="leader"), spec=spec)
    created = await leases.create_namespaced_lease("modelcache", lease)
    assert created.metadata.namespace == "modelcache"
    await leases.create_namespaced_lease("other", lease)  # same name, other namespace

    created.spec.holder_identity = "coordinator-1"
    replaced = await leases.replace_namespaced_lease("leader", "modelcache", created)
    assert replaced.spec.holder_identity == "coordinator-1"
    with pytest.raises(ApiException) as stale:
        await leases.replace_namespaced_lease("leader", "modelcache", created)
    assert stale.value.status == 409

    mine = await leases.list_namespaced_lease("modelcache")
    assert [item.spec.holder_identity for item in mine.items] == ["coordinator-1"]
    everywhere = await leases.list_lease_for_all_namespaces()
    assert sorted(item.metadata.namespace for item in everywhere.items) == ["modelcache", "other"]
    assert fake_kube.get("leases", "leader", "other")["spec"]["holderIdentity"] == "coordinator-0"

    lease.metadata.namespace = "elsewhere"
    with pytest.raises(ApiException) as mismatch:
        await leases.create_namespaced_lease("modelcache", lease)
    assert mismatch.value.status == 400


async def test_pods_are_namespaced_and_take_label_merge_patches(
    fake_kube: FakeKubeHandle, core: client.CoreV1Api
) -> None:
    """What a Service's selector sees: the coordinator's leader labels its own pod."""
    labels = {"app.kubernetes.io/name": "modelcache-coordinator"}
    fake_kube.create("pods", {"metadata": {"name": "c-0", "namespace": "ns", "labels": labels}})
    fake_kube.create("pods", {"metadata": {"name": "c-0", "namespace": "other"}})
    merge: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
    await core.patch_namespaced_pod("c-0", "ns", {"metadata": {"labels": {"role": "x"}}}, **merge)
    selected = fake_kube.list("pods", "ns", label_selector="role=x")
    assert [(p["metadata"]["name"], p["metadata"]["labels"]) for p in selected] == [
        ("c-0", {**labels, "role": "x"})
    ]
    await core.patch_namespaced_pod("c-0", "ns", {"metadata": {"labels": {"role": None}}}, **merge)
    assert fake_kube.get("pods", "c-0", "ns")["metadata"]["labels"] == labels
    assert fake_kube.list("pods", "other", label_selector="role=x") == []
    with pytest.raises(ApiException) as missing:
        await core.patch_namespaced_pod("c-1", "ns", {"metadata": {"labels": {}}}, **merge)
    assert missing.value.status == 404


async def test_exact_list_reads_the_past_until_compacted(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    await crd.create_cluster_custom_object(G, V, CACHES, cache("a"))
    past = fake_kube.resource_version
    await crd.create_cluster_custom_object(G, V, CACHES, cache("b"))
    await crd.delete_cluster_custom_object(G, V, CACHES, "a")

    then = await crd.list_cluster_custom_object(
        G, V, CACHES, resource_version=str(past), resource_version_match="Exact"
    )
    assert [i["metadata"]["name"] for i in then["items"]] == ["a"]
    assert then["metadata"]["resourceVersion"] == str(past)

    fake_kube.compact()
    with pytest.raises(ApiException) as gone:
        await crd.list_cluster_custom_object(
            G, V, CACHES, resource_version=str(past), resource_version_match="Exact"
        )
    assert (gone.value.status, status_of(gone.value)["reason"]) == (410, "Expired")


async def test_discovery(kube_api: ApiClient) -> None:
    version = await client.VersionApi(kube_api).get_code()
    assert version.major == "1"
    core = await client.CoreApi(kube_api).get_api_versions()
    assert core.versions == ["v1"]
    groups = await client.ApisApi(kube_api).get_api_versions()
    assert {g.name for g in groups.groups} == {G, "coordination.k8s.io"}
    served = await client.CustomObjectsApi(kube_api).get_api_resources(G, V)
    names = {r.name for r in served.resources}
    assert names == {
        CACHES,
        f"{CACHES}/status",
        GROUPS,
        "localmodelnodes",
        "localmodelnodes/status",
    }
    nodes = await client.CoreV1Api(kube_api).get_api_resources()
    assert {r.name for r in nodes.resources} == {"nodes", "nodes/status", "pods", "pods/status"}


def test_handle_helpers_write_any_field(fake_kube: FakeKubeHandle) -> None:
    seeded = fake_kube.create(CACHES, {**cache("llama"), "status": {"copies": {"total": 1}}})
    assert seeded["status"] == {"copies": {"total": 1}}, "direct writes keep status"
    patched = fake_kube.patch(CACHES, "llama", {"status": {"copies": {"total": 2}}})
    assert patched["metadata"]["generation"] == 1
    assert fake_kube.list(CACHES) == [patched]
    assert fake_kube.list(CACHES, label_selector="x=y") == []
    fake_kube.delete(CACHES, "llama")
    with pytest.raises(ApiError) as missing:
        fake_kube.get(CACHES, "llama")
    assert missing.value.code == 404
    with pytest.raises(KeyError, match="unknown resource 'secrets'"):
        fake_kube.list("secrets")
