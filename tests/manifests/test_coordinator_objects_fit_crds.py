"""What the coordinator writes must survive the API server: a status field our CRD does not
declare would be pruned (dropped without an error). A real coordinator on the embedded store
renders the same objects the kube store writes; each must validate against its CRD with
undeclared fields refused."""

from __future__ import annotations

from pathlib import Path

from tests.coordinator.conftest import GiB, cache, fast_settings, node_group, serving
from tests.manifests.crd_schemas import crds, schema_errors

LLAMA = "hf://meta-llama/meta-llama-3-8b-instruct"
PHI = "hf://microsoft/phi-3"


async def test_objects_with_every_status_field_fit_the_crds(tmp_path: Path) -> None:
    schemas = crds()
    async with serving(fast_settings(tmp_path / "coordinator.db")) as api:
        await api.put(node_group("a100", "20Gi"))
        await api.put(node_group("h100", "80Gi"))
        await api.register("gpu-a100-0", "a100")
        await api.register("gpu-h100-0", "h100", free=50 * GiB)
        await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
        await api.put(cache("phi", PHI, "8Gi", "a100", "h100"))  # does not fit a100: not admitted
        await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
        await api.report("gpu-h100-0", {LLAMA: "ModelDownloading", PHI: "ModelDownloadError"})
        await api.settle()
        objects = [
            *(await api.call("GET", "/v1/localmodelcaches"))["items"],
            *(await api.call("GET", "/v1/localmodelnodegroups"))["items"],
            *(await api.call("GET", "/v1/localmodelnodes"))["items"],
        ]
    statuses = {o["metadata"]["name"]: o.get("status", {}) for o in objects}
    # The scenario reaches the fields worth checking (else the test would prove little).
    assert {"nodeStatus", "copies", "nodeGroupStatus", "conditions", "nodeProgress"} <= set(
        statuses["llama3"]
    )
    assert statuses["llama3"]["nodeGroupStatus"]["h100"]["admitted"] is True
    assert statuses["phi"]["nodeGroupStatus"]["a100"]["admitted"] is False
    assert {"modelStatus", "modelDetails"} <= set(statuses["gpu-h100-0"])
    assert {"used", "available"} <= set(statuses["a100"])
    # The check itself bites: an undeclared status field is refused.
    (llama3,) = [o for o in objects if o["metadata"]["name"] == "llama3"]
    undeclared = {**llama3, "status": {**llama3["status"], "progresss": 1}}
    assert schema_errors(schemas["LocalModelCache"], undeclared)
    for obj in objects:
        errors = schema_errors(schemas[obj["kind"]], obj)
        assert errors == [], f"{obj['kind']} {obj['metadata']['name']}: {errors}"
