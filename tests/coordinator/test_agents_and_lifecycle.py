"""Agents register, long-poll what to hold and report; status and deletions follow."""

from __future__ import annotations

import asyncio

from modelcache.contract.storage_keys import storage_key
from tests.coordinator.conftest import Api, cache, node_group

LLAMA = "hf://meta-llama/meta-llama-3-8b-instruct"
PHI = "hf://microsoft/phi-3"


async def _cluster(api: Api) -> None:
    await api.put(node_group("a100", "80Gi"))
    await api.put(node_group("h100", "80Gi"))
    for node, group in (("gpu-a100-0", "a100"), ("gpu-a100-1", "a100"), ("gpu-h100-0", "h100")):
        await api.register(node, group)


async def test_each_node_gets_the_models_of_its_group(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
    await api.put(cache("phi", PHI, "8Gi", "h100"))
    a100 = await api.desired("gpu-a100-0")
    assert [m["caches"] for m in a100["models"]] == [["llama3"]]
    assert a100["models"][0]["storageKey"] == storage_key(LLAMA)
    assert a100["models"][0]["modelSizeBytes"] == 16 << 30
    h100 = await api.desired("gpu-h100-0")
    assert sorted(m["caches"][0] for m in h100["models"]) == ["llama3", "phi"]


async def test_long_poll_waits_for_a_change_and_returns_at_once_after_one(api: Api) -> None:
    await _cluster(api)
    first = await api.desired("gpu-a100-0")
    poll = asyncio.create_task(api.desired("gpu-a100-0", first["generation"], wait=5))
    await asyncio.sleep(0.2)
    assert not poll.done()  # nothing changed: still waiting
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    changed = await asyncio.wait_for(poll, 2)
    assert changed["generation"] > first["generation"]
    assert [m["caches"] for m in changed["models"]] == [["llama3"]]
    unchanged = await api.desired("gpu-a100-0", changed["generation"], wait=0)
    assert unchanged["generation"] == changed["generation"]


async def test_reports_become_kserve_status_and_our_details(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    await api.report("gpu-a100-1", {LLAMA: "ModelDownloading"})
    await api.report("gpu-h100-0", {LLAMA: "ModelDownloadError"})
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert status["nodeStatus"] == {
        "gpu-a100-0": "NodeDownloaded",
        "gpu-a100-1": "NodeDownloading",
        "gpu-h100-0": "NodeDownloadError",
    }
    assert status["copies"] == {"total": 3, "available": 1, "failed": 1}
    assert status["nodeGroupStatus"]["a100"]["available"] == 1
    assert status["nodeProgress"]["gpu-a100-1"]["bytesDone"] == 5
    assert status["firstStartedAt"] == "2026-11-24T10:00:00Z"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"]) == ("False", "1 of 3 copies downloaded")
    node = await api.call("GET", "/v1/localmodelnodes/gpu-a100-1")
    assert node["spec"]["localModels"] == [
        {"modelName": "llama3", "sourceModelUri": LLAMA, "nodeGroup": "a100"}
    ]
    assert node["status"]["modelStatus"] == {"llama3": "ModelDownloading"}
    assert node["status"]["modelDetails"]["llama3"]["progress"] == 0.5
    placement = await api.call("GET", "/v1/placement?cache=llama3&nodegroup=a100")
    assert placement["nodes"] == ["gpu-a100-0"]
    group = await api.call("GET", "/v1/nodegroups/a100")
    assert [n["name"] for n in group["nodes"]] == ["gpu-a100-0", "gpu-a100-1"]
    assert group["used"] == "16Gi"
    assert group["available"] == "64Gi"
    assert group["models"][0]["nodeStatus"]["gpu-a100-1"] == "NodeDownloading"
    for node_name in ("gpu-a100-1", "gpu-h100-0"):
        await api.report(node_name, {LLAMA: "ModelDownloaded"})
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert status["copies"] == {"total": 3, "available": 3, "failed": 0}
    assert status["finishedAt"] == "2026-11-24T10:05:00Z"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"


async def test_refused_admission_is_a_condition_with_numbers(api: Api) -> None:
    await api.put(node_group("a100", "8Gi"))
    # Created in the same second as llama3: ties go by name, so "gemma" is older.
    await api.put(cache("gemma", "hf://g/gemma", "6Gi", "a100"))
    refused = await api.put(cache("llama3", LLAMA, "4Gi", "a100", "h100"))
    conditions = {c["type"]: c for c in refused["status"]["conditions"]}
    assert conditions["Admitted-a100"]["status"] == "False"
    assert conditions["Admitted-a100"]["message"].startswith(
        "llama3 (4Gi) does not fit node group a100: 6Gi of 8Gi storageLimit already used"
    )
    assert conditions["Admitted-h100"]["reason"] == "NodeGroupNotFound"
    # Raising the limit re-validates; the group appearing places it there too.
    await api.put(node_group("a100", "10Gi"))
    await api.put(node_group("h100", "10Gi"))
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "False",
        "Admitted-a100": "True",
        "Admitted-h100": "True",
    }


async def test_missed_heartbeats_make_a_node_not_ready(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    await api.report("gpu-a100-1", {LLAMA: "ModelDownloaded"})
    for _ in range(10):  # a100-0 keeps reporting, a100-1 has gone quiet
        await asyncio.sleep(0.1)
        await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert status["nodeStatus"] == {"gpu-a100-0": "NodeDownloaded", "gpu-a100-1": "NodeNotReady"}
    assert (await api.call("GET", "/v1/placement?cache=llama3"))["nodes"] == ["gpu-a100-0"]


async def test_deleting_a_cache_waits_until_every_node_removed_the_files(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    for node in ("gpu-a100-0", "gpu-a100-1"):
        await api.report(node, {LLAMA: "ModelDownloaded"})
    deleting = await api.call("DELETE", "/v1/localmodelcaches/llama3", expect=202)
    assert deleting["metadata"]["deletionTimestamp"]
    desired = await api.desired("gpu-a100-0")
    assert desired["models"] == []  # agents are told to delete
    await api.report("gpu-a100-0", {}, generation=desired["generation"])
    await api.settle()
    still = await api.call("GET", "/v1/localmodelcaches/llama3")
    assert still["status"]["nodeStatus"] == {"gpu-a100-1": "NodeDownloaded"}
    ready = next(c for c in still["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "waiting for gpu-a100-1 to remove the files"
    await api.report("gpu-a100-1", {}, generation=desired["generation"])
    await api.settle()
    await api.call("GET", "/v1/localmodelcaches/llama3", expect=404)


async def test_a_node_not_ready_too_long_does_not_block_deletion(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    await api.report("gpu-a100-1", {LLAMA: "ModelDownloaded"})
    await api.call("DELETE", "/v1/localmodelcaches/llama3", expect=202)
    for _ in range(18):  # gpu-a100-0 falls silent; gpu-a100-1 is slow to delete its files
        await asyncio.sleep(0.1)
        await api.report("gpu-a100-1", {LLAMA: "ModelDownloaded"})
    # heartbeat timeout 0.6 s + NotReady timeout 1 s have passed for gpu-a100-0
    ready = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]["conditions"][0]
    assert ready["message"] == (
        "waiting for gpu-a100-1 to remove the files; not waiting for gpu-a100-0: NotReady for "
        "longer than 1s; their files are removed when they return"
    )
    await api.report("gpu-a100-1", {})
    await api.settle()
    await api.call("GET", "/v1/localmodelcaches/llama3", expect=404)


async def test_group_removed_or_node_moved_tells_agents_to_delete(api: Api) -> None:
    await _cluster(api)
    await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
    await api.report("gpu-h100-0", {LLAMA: "ModelDownloaded"})
    await api.put(cache("llama3", LLAMA, "16Gi", "a100"))
    assert (await api.desired("gpu-h100-0"))["models"] == []
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert "gpu-h100-0" in status["nodeStatus"]  # listed until its files are gone
    await api.report("gpu-h100-0", {})
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert sorted(status["nodeStatus"]) == ["gpu-a100-0", "gpu-a100-1"]
    await api.register("gpu-a100-1", "h100")  # moved to another pool
    assert (await api.desired("gpu-a100-1"))["models"] == []
    await api.call("DELETE", "/v1/agents/gpu-a100-0", expect=204)  # node removed
    status = (await api.call("GET", "/v1/localmodelcaches/llama3"))["status"]
    assert status["nodeStatus"] == {}
    await api.call("GET", "/v1/localmodelnodes/gpu-a100-0", expect=404)


async def test_reports_from_unregistered_nodes_are_refused(api: Api) -> None:
    error = await api.call(
        "POST",
        "/v1/agents/ghost/status",
        expect=404,
        json={"disk": {"capacityBytes": 1, "freeBytes": 1}, "models": []},
    )
    assert "register" in error["error"]
    bad = await api.call(
        "POST", "/v1/agents/ghost/register", expect=422, json={"disk": {"capacityBytes": -1}}
    )
    assert bad["field"] == "disk.capacityBytes"
