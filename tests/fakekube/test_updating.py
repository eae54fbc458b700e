"""Writes to the fake API server through the real client: replace, patch, status, delete."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiException

from tests.fakekube.fixtures import FakeKubeHandle, patch
from tests.fakekube.samples import CACHES, GROUPS, RFC3339_Z, G, V, cache, status_of


async def test_replace_checks_resource_version_and_bumps_generation_on_spec_only(
    crd: client.CustomObjectsApi,
) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))

    relabelled = {**created, "metadata": {**created["metadata"], "labels": {"team": "ml"}}}
    relabelled["status"] = {"copies": {"available": 1}}  # ignored: status is a subresource
    second = await crd.replace_cluster_custom_object(G, V, CACHES, "llama", relabelled)
    assert second["metadata"]["labels"] == {"team": "ml"}
    assert second["metadata"]["generation"] == 1, "metadata changes keep the generation"
    assert "status" not in second
    assert int(second["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    with pytest.raises(ApiException) as stale:
        await crd.replace_cluster_custom_object(G, V, CACHES, "llama", created)
    assert (stale.value.status, status_of(stale.value)["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status_of(stale.value)["message"]

    respec = {**second, "spec": {**second["spec"], "nodeGroups": ["h100"]}}
    third = await crd.replace_cluster_custom_object(G, V, CACHES, "llama", respec)
    assert third["metadata"]["generation"] == 2
    # System fields in the body are not the client's to change.
    forged = {**third, "metadata": {**third["metadata"], "generation": 9, "uid": None}}
    fourth = await crd.replace_cluster_custom_object(G, V, CACHES, "llama", forged)
    assert fourth["metadata"]["generation"] == 2
    assert fourth["metadata"]["uid"] == created["metadata"]["uid"]


async def test_unconditional_updates(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    del created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as refused:
        await crd.replace_cluster_custom_object(G, V, CACHES, "llama", created)
    assert (refused.value.status, status_of(refused.value)["reason"]) == (422, "Invalid")

    fake_kube.create("nodes", {"metadata": {"name": "gpu-1"}})
    node = client.V1Node(metadata=client.V1ObjectMeta(name="gpu-1", labels={"zone": "a"}))
    replaced = await core.replace_node("gpu-1", node)  # built-in types allow it
    assert replaced.metadata.labels == {"zone": "a"}


async def test_status_subresource_writes_status_only(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    body = {
        **created,
        "metadata": {**created["metadata"], "labels": {"ignored": "yes"}},
        "spec": {"sourceModelUri": "hf://ignored/too", "nodeGroups": ["x"]},
        "status": {"copies": {"available": 1, "total": 2}},
    }
    written = await crd.replace_cluster_custom_object_status(G, V, CACHES, "llama", body)
    assert written["status"] == {"copies": {"available": 1, "total": 2}}
    assert written["spec"] == created["spec"]
    assert "labels" not in written["metadata"]
    assert written["metadata"]["generation"] == 1

    patched = await patch(
        crd, CACHES, "llama", {"status": {"copies": {"total": None}}}, status=True
    )
    assert patched["status"] == {"copies": {"available": 1}}
    assert (await crd.get_cluster_custom_object_status(G, V, CACHES, "llama")) == patched

    # Status sent to the main resource is dropped: nothing changes, not even the version.
    before = fake_kube.resource_version
    same = await patch(crd, CACHES, "llama", {"status": {"copies": None}})
    assert same == patched
    assert fake_kube.resource_version == before


async def test_node_group_status_goes_through_the_main_resource(
    crd: client.CustomObjectsApi,
) -> None:
    group = {
        "apiVersion": f"{G}/{V}",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": "a100"},
        "spec": {"storageLimit": "1Ti"},
    }
    await crd.create_cluster_custom_object(G, V, GROUPS, {**group, "status": {"used": "0"}})
    with pytest.raises(ApiException) as no_status:
        await crd.get_cluster_custom_object_status(G, V, GROUPS, "a100")
    assert no_status.value.status == 404
    patched = await patch(crd, GROUPS, "a100", {"status": {"used": "1Gi"}})
    assert patched["status"] == {"used": "1Gi"}
    assert patched["metadata"]["generation"] == 2, "without the subresource, status is content"


async def test_patch_content_types(crd: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    await crd.create_cluster_custom_object(G, V, CACHES, cache("llama", {"a": "1", "b": "2"}))
    # The client sends a dict body as a JSON patch, which a real server refuses.
    with pytest.raises(ApiException) as as_json_patch:
        await crd.patch_cluster_custom_object(G, V, CACHES, "llama", {"spec": {"x": 1}})
    assert as_json_patch.value.status == 400
    assert "jsonpatch.Patch" in status_of(as_json_patch.value)["message"]

    merged = await patch(crd, CACHES, "llama", {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert merged["metadata"]["labels"] == {"b": "2", "c": "3"}

    operations = [
        {"op": "test", "path": "/spec/nodeGroups/0", "value": "a100"},
        {"op": "add", "path": "/spec/nodeGroups/-", "value": "h100"},
        {"op": "replace", "path": "/metadata/labels/b", "value": "20"},
    ]
    patched = await crd.patch_cluster_custom_object(G, V, CACHES, "llama", operations)
    assert patched["spec"]["nodeGroups"] == ["a100", "h100"]
    assert patched["metadata"]["labels"] == {"b": "20", "c": "3"}
    assert patched["metadata"]["generation"] == 2

    failing = [{"op": "test", "path": "/spec/nodeGroups/0", "value": "v100"}]
    with pytest.raises(ApiException) as test_failed:
        await crd.patch_cluster_custom_object(G, V, CACHES, "llama", failing)
    assert test_failed.value.status == 422

    smp = "application/strategic-merge-patch+json"
    with pytest.raises(ApiException) as no_smp:
        await patch(crd, CACHES, "llama", {"spec": {}}, content_type=smp)
    assert (no_smp.value.status, status_of(no_smp.value)["reason"]) == (
        415,
        "UnsupportedMediaType",
    )
    # Built-in types take the client's default for dict bodies: strategic merge patch.
    await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="gpu-1")))
    node = await core.patch_node("gpu-1", {"metadata": {"labels": {"zone": "a"}}})
    assert node.metadata.labels == {"zone": "a"}


async def test_patch_with_resource_version_is_optimistic(crd: client.CustomObjectsApi) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    rv = created["metadata"]["resourceVersion"]
    change = {"metadata": {"resourceVersion": rv, "labels": {"a": "1"}}}
    await patch(crd, CACHES, "llama", change)
    with pytest.raises(ApiException) as stale:
        await patch(crd, CACHES, "llama", change)
    assert stale.value.status == 409


async def test_delete_without_finalizers_removes_at_once(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    answer = await crd.delete_cluster_custom_object(G, V, CACHES, "llama")
    assert answer["status"] == "Success"
    assert answer["details"] == {
        "name": "llama",
        "group": G,
        "kind": CACHES,
        "uid": created["metadata"]["uid"],
    }
    assert not fake_kube.exists(CACHES, "llama")
    with pytest.raises(ApiException) as again:
        await crd.delete_cluster_custom_object(G, V, CACHES, "llama")
    assert again.value.status == 404


async def test_delete_with_finalizers_waits_for_them(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    body = cache("llama")
    body["metadata"]["finalizers"] = ["localmodel.kserve.io/finalizer"]
    await crd.create_cluster_custom_object(G, V, CACHES, body)

    marked = await crd.delete_cluster_custom_object(G, V, CACHES, "llama")
    meta = marked["metadata"]
    assert RFC3339_Z.match(meta["deletionTimestamp"])
    assert meta["deletionGracePeriodSeconds"] == 0
    assert meta["generation"] == 2, "the real server bumps generation when marking deletion"
    assert fake_kube.get(CACHES, "llama") == marked
    assert (await crd.delete_cluster_custom_object(G, V, CACHES, "llama")) == marked

    more = {"metadata": {"finalizers": ["localmodel.kserve.io/finalizer", "other/finalizer"]}}
    with pytest.raises(ApiException) as refused:
        await patch(crd, CACHES, "llama", more)
    assert (refused.value.status, status_of(refused.value)["reason"]) == (422, "Invalid")
    assert "no new finalizers" in status_of(refused.value)["message"]

    # Status writes still work while finalizers hold the object.
    await patch(crd, CACHES, "llama", {"status": {"copies": {"available": 0}}}, status=True)
    release = {"metadata": {"finalizers": None}}
    await patch(crd, CACHES, "llama", release)
    assert not fake_kube.exists(CACHES, "llama")


async def test_delete_preconditions(crd: client.CustomObjectsApi) -> None:
    created = await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    wrong = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as refused:
        await crd.delete_cluster_custom_object(G, V, CACHES, "llama", body=wrong)
    assert refused.value.status == 409
    assert "Precondition failed" in status_of(refused.value)["message"]
    right = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=created["metadata"]["uid"])
    )
    assert (await crd.delete_cluster_custom_object(G, V, CACHES, "llama", body=right))[
        "status"
    ] == "Success"


async def test_conflict_next_refuses_the_next_updates_and_requests_are_logged(
    fake_kube: FakeKubeHandle, crd: client.CustomObjectsApi
) -> None:
    await crd.create_cluster_custom_object(G, V, CACHES, cache("llama"))
    fake_kube.conflict_next(CACHES, "llama", times=2)
    change = {"metadata": {"labels": {"a": "1"}}}
    for _ in range(2):
        with pytest.raises(ApiException) as refused:
            await patch(crd, CACHES, "llama", change)
        assert (refused.value.status, status_of(refused.value)["reason"]) == (409, "Conflict")
        assert "labels" not in fake_kube.get(CACHES, "llama")["metadata"]
    patched = await patch(crd, CACHES, "llama", change)
    assert patched["metadata"]["labels"] == {"a": "1"}

    path = f"/apis/{G}/{V}/{CACHES}/llama"
    assert [(r.method, r.path) for r in fake_kube.writes(CACHES)] == [
        ("POST", f"/apis/{G}/{V}/{CACHES}"),
        ("PATCH", path),
        ("PATCH", path),
        ("PATCH", path),
    ]
    await crd.list_cluster_custom_object(G, V, CACHES, label_selector="a=1")
    assert fake_kube.requests[-1].query == {"labelSelector": "a=1"}
