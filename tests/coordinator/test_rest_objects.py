"""Objects over REST on the embedded store: Kubernetes shape in and out, bad input answered
with the field at fault, never a 500."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.coordinator.conftest import Api, cache, fast_settings, node_group, serving


async def test_put_get_list_in_kubernetes_shape_with_canonical_quantities(api: Api) -> None:
    created = await api.put(node_group("a100", "1024Gi"), expect=201)
    assert created["spec"]["storageLimit"] == "1Ti"  # as the API server would print it
    seed_spelling = cache("llama3", "hf://meta-llama/meta-llama-3-8b-instruct", "10Gi", "a100")
    seed_spelling["spec"]["nodeGroup"] = seed_spelling["spec"].pop("nodeGroups")
    stored = await api.put(seed_spelling, expect=201)
    assert stored["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert stored["spec"]["nodeGroups"] == ["a100"]
    assert "nodeGroup" not in stored["spec"]
    metadata = stored["metadata"]
    assert metadata["uid"]
    assert metadata["creationTimestamp"].endswith("Z")
    assert metadata["finalizers"] == ["localmodel.kserve.io/finalizer"]
    assert stored["status"]["copies"] == {"total": 0, "available": 0, "failed": 0}
    listing = await api.call("GET", "/v1/localmodelcaches")
    assert listing["kind"] == "LocalModelCacheList"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["llama3"]
    again = await api.put(seed_spelling, expect=200)
    assert again["metadata"]["uid"] == metadata["uid"]
    assert int(again["metadata"]["resourceVersion"]) > int(metadata["resourceVersion"])


async def test_put_accepts_yaml(api: Api) -> None:
    text = yaml.safe_dump(node_group("h100", "500G"))
    async with api.http.put(
        f"{api.url}/v1/localmodelnodegroups/h100",
        data=text,
        headers={"Content-Type": "application/yaml"},
    ) as response:
        assert response.status == 201
        assert (await response.json())["spec"]["storageLimit"] == "500G"


async def test_bad_input_names_the_field(api: Api) -> None:
    cases = [
        (cache("m", "ftp://x/y", "1Gi", "a100"), "spec.sourceModelUri"),
        (cache("m", "hf://o/m", "-1Gi", "a100"), "spec.modelSize"),
        (cache("m", "hf://o/m", "ten gigs", "a100"), "spec.modelSize"),
        (cache("m", "hf://o/m", "1Gi"), "spec.nodeGroups"),
        (cache("m", "hf://o/m", "1Gi", "a100", "a100"), "spec.nodeGroups"),
        (cache("m", "hf://o/m", "1Gi", "bad group!"), "spec.nodeGroups[0]"),
        ({**cache("m", "hf://o/m", "1Gi", "a"), "kind": "Pod"}, "kind"),
        ({**cache("m", "hf://o/m", "1Gi", "a"), "metadata": {"name": "other"}}, "metadata.name"),
    ]
    for body, field in cases:
        async with api.http.put(f"{api.url}/v1/localmodelcaches/m", json=body) as response:
            assert response.status == 422, (field, await response.text())
            error = await response.json()
            assert error["field"] == field, error
            assert error["error"]
    async with api.http.put(f"{api.url}/v1/localmodelcaches/m", data=b"{not json") as response:
        assert response.status == 422
        assert "not valid JSON" in (await response.json())["error"]
    async with api.http.put(f"{api.url}/v1/localmodelcaches/Bad_Name", json={}) as response:
        assert response.status == 422
        assert (await response.json())["field"] == "metadata.name"
    assert (await api.call("GET", "/v1/localmodelcaches"))["items"] == []


async def test_source_uri_is_immutable(api: Api) -> None:
    await api.put(cache("m", "hf://o/m", "1Gi", "a100"))
    async with api.http.put(
        f"{api.url}/v1/localmodelcaches/m", json=cache("m", "hf://o/other", "1Gi", "a100")
    ) as response:
        assert response.status == 422
        assert (await response.json())["field"] == "spec.sourceModelUri"


async def test_missing_objects_are_404_with_a_message(api: Api) -> None:
    for path in (
        "/v1/localmodelcaches/nope",
        "/v1/localmodelnodegroups/nope",
        "/v1/localmodelnodes/nope",
        "/v1/nodegroups/nope",
        "/v1/placement?cache=nope",
    ):
        error = await api.call("GET", path, expect=404)
        assert "nope" in error["error"]
    await api.call("DELETE", "/v1/localmodelcaches/nope", expect=404)


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "db.sqlite")
    async with serving(settings) as api:
        await api.put(node_group("a100", "80Gi"))
        await api.put(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        await api.register("gpu-a100-0", "a100")
        await api.report("gpu-a100-0", {"hf://o/llama3": "ModelDownloaded"})
        await api.settle()
        before = await api.call("GET", "/v1/localmodelcaches/llama3")
    async with serving(settings) as api:
        after = await api.call("GET", "/v1/localmodelcaches/llama3")
        assert after["metadata"] == before["metadata"]
        assert after["spec"] == before["spec"]
        # The node is remembered with its last report, NotReady until it reports again.
        assert after["status"]["nodeStatus"] == {"gpu-a100-0": "NodeNotReady"}
        await api.report("gpu-a100-0", {"hf://o/llama3": "ModelDownloaded"})
        after = await api.call("GET", "/v1/localmodelcaches/llama3")
        assert after["status"]["nodeStatus"] == {"gpu-a100-0": "NodeDownloaded"}


async def test_service_endpoints(api: Api) -> None:
    assert (await api.call("GET", "/healthz"))["status"] == "ok"
    assert (await api.call("GET", "/readyz"))["status"] == "ready"
    spec = await api.call("GET", "/openapi.json")
    assert "/v1/agents/{node}/desired" in spec["paths"]
    await api.register("n1", "a100")
    await api.report("n1", {})
    await api.settle()
    async with api.http.get(f"{api.url}/metrics") as response:
        text = await response.text()
    assert "modelcache_coordinator_reports_total 1.0" in text
    assert 'modelcache_coordinator_objects{kind="LocalModelNode"} 1.0' in text
    assert "modelcache_coordinator_aggregation_lag_seconds" in text


async def test_statuses_are_written_into_the_embedded_store(tmp_path: Path) -> None:
    import sqlite3

    settings = fast_settings(tmp_path / "db.sqlite")
    async with serving(settings) as api:
        await api.put(node_group("a100", "80Gi"))
        await api.put(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        await api.register("gpu-a100-0", "a100")
        await api.report("gpu-a100-0", {"hf://o/llama3": "ModelDownloading"})
        await api.settle()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        rows = dict(db.execute("SELECT name, body FROM objects WHERE kind = 'LocalModelCache'"))
    stored = yaml.safe_load(rows["llama3"])  # JSON is YAML
    assert stored["status"]["nodeStatus"] == {"gpu-a100-0": "NodeDownloading"}
    assert stored["status"]["copies"] == {"total": 1, "available": 0, "failed": 0}
