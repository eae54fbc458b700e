"""The admission webhooks in a running coordinator on the fake API server: real agents pull the
model, the coordinator labels the Nodes that hold it, the mutating webhook (over HTTPS, with a
certificate from files) pins an InferenceService to those labels, the validating webhook refuses
what does not fit and a cache still in use, and deleting the cache takes the labels away."""

from __future__ import annotations

import base64
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
import trustme

from modelcache.agent.settings import KubeAccess
from modelcache.coordinator.binding import (
    LOCAL_MODEL_LABEL,
    NODE_GROUP_ANNOTATION,
    model_node_label,
)
from modelcache.coordinator.webhook_settings import WebhookSettings
from modelcache.coordinator.webhooks import MUTATE_ISVC_PATH, VALIDATE_CACHE_PATH
from tests.coordinator.conftest import cache
from tests.coordinator.test_kube_store import CACHES
from tests.e2e.conftest import KEY, REPO_URI, Cluster, eventually
from tests.e2e.test_kube_e2e import A100, ALL_NODES, H100, running_kube_cluster
from tests.fakekube.fixtures import FakeKubeHandle, write_kubeconfig
from tests.fakekube.resources import RESOURCES, ResourceSpec
from tests.fakekube.server import FakeKube, start_fake_kube
from tests.hub_origin import HubFixture

ISVCS = "inferenceservices"
ISVC_RESOURCE = ResourceSpec(
    "serving.kserve.io",
    "v1beta1",
    ISVCS,
    "InferenceService",
    namespaced=True,
    status_subresource=True,
    custom=True,
)
CACHE_KIND = {"group": "serving.kserve.io", "version": "v1alpha1", "kind": "LocalModelCache"}
ISVC_KIND = {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"}
LABEL = model_node_label(KEY)


@pytest.fixture
async def kserve_kube(tmp_path: Path) -> AsyncIterator[FakeKubeHandle]:
    """The fake API server with KServe's InferenceService CRD installed."""
    server = FakeKube((*RESOURCES, ISVC_RESOURCE), bookmark_interval=1.0)
    runner, url = await start_fake_kube(server)
    try:
        yield FakeKubeHandle(server, url, write_kubeconfig(tmp_path / "kubeconfig", url))
    finally:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Webhooks:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def review(self, path: str, **request: Any) -> Any:
        uid = str(uuid.uuid4())
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": uid, **request},
        }
        async with self.session.post(self.url + path, data=orjson.dumps(body)) as response:
            answer = orjson.loads(await response.read())
            assert response.status == 200, answer
        assert answer["response"]["uid"] == uid
        return answer["response"]


@pytest.fixture
async def admission_cluster(
    tmp_path: Path, hub: HubFixture, kserve_kube: FakeKubeHandle
) -> AsyncIterator[tuple[Cluster, Webhooks]]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    port = _free_port()
    webhook = WebhookSettings("127.0.0.1", port, cert, key, reload_interval=0.2)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with (
        running_kube_cluster(tmp_path, hub, kserve_kube, webhook=webhook) as cluster,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context)) as session,
    ):
        for node in ALL_NODES:  # what the device plugin reports
            kserve_kube.patch("nodes", node, {"status": {"allocatable": {"nvidia.com/gpu": "8"}}})
        await kserve_kube.wait_for_watches(ISVCS)
        yield cluster, Webhooks(f"https://127.0.0.1:{port}", session)


def _labelled(fake_kube: FakeKubeHandle) -> dict[str, bool]:
    labels = {n: fake_kube.get("nodes", n)["metadata"].get("labels") or {} for n in ALL_NODES}
    return {node: labels[node].get(LABEL) == "downloaded" for node in ALL_NODES}


def _isvc(**annotations: str) -> Any:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "team-a", "annotations": annotations},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "storageUri": REPO_URI,
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            }
        },
    }


async def test_pulled_models_label_nodes_and_bound_isvcs_are_pinned_to_them(
    admission_cluster: tuple[Cluster, Webhooks], kserve_kube: FakeKubeHandle
) -> None:
    cluster, webhooks = admission_cluster
    kserve_kube.create(CACHES, cache("tiny", REPO_URI, "10Mi", "a100"))
    access = KubeAccess(api_url=kserve_kube.url)
    for node in ALL_NODES:
        await cluster.start_agent(node, None, kube=access)

    everywhere = {node: node in A100 for node in ALL_NODES}
    await eventually(
        lambda: _labelled(kserve_kube) == everywhere, "the a100 Nodes labelled, not h100", 10
    )
    registry = cluster.api.coordinator.registry
    assert registry.nodes[A100[0]].allocatable_gpus == 8

    obj = _isvc(**{NODE_GROUP_ANNOTATION: "a100"})
    response = await webhooks.review(
        MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", namespace="team-a", object=obj
    )
    assert response["allowed"] is True, response
    assert "warnings" not in response  # both a100 nodes hold the model already
    ops = orjson.loads(base64.b64decode(response["patch"]))
    bound = jsonpatch.apply_patch(obj, ops)
    assert bound["metadata"]["labels"] == {LOCAL_MODEL_LABEL: "tiny"}
    affinity = bound["spec"]["predictor"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": LABEL, "operator": "In", "values": ["downloaded"]},
        {"key": "serving.kserve.io/nodegroup", "operator": "In", "values": ["a100"]},
    ]
    # The scheduler's view: exactly the nodes holding the model match the pinned pod.
    matching = {
        node
        for node in ALL_NODES
        if all(
            (kserve_kube.get("nodes", node)["metadata"].get("labels") or {}).get(e["key"])
            in e["values"]
            for e in term["matchExpressions"]
        )
    }
    assert matching == set(A100)

    # The bound InferenceService is created: deleting its cache is refused while it exists.
    kserve_kube.create(ISVCS, bound)
    await eventually(lambda: registry.inference_services.using("tiny") != [], "ISVC watched", 5)
    refusal = await webhooks.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="DELETE", name="tiny", oldObject=None
    )
    assert refusal["allowed"] is False
    assert refusal["status"]["code"] == 409
    assert "team-a/chat" in refusal["status"]["message"]

    def users_in_status() -> list[dict[str, str]]:
        status = kserve_kube.get(CACHES, "tiny").get("status") or {}
        return list(status.get("inferenceServices") or [])

    using = [{"namespace": "team-a", "name": "chat"}]
    await eventually(lambda: users_in_status() == using, "KServe's status lists its user", 5)
    kserve_kube.delete(ISVCS, "chat", namespace="team-a")
    await eventually(lambda: registry.inference_services.using("tiny") == [], "ISVC gone", 5)
    await eventually(lambda: users_in_status() == [], "and no longer once it is gone", 5)
    allowed = await webhooks.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="DELETE", name="tiny", oldObject=None
    )
    assert allowed["allowed"] is True

    # Deleting the cache takes the labels away (before the agents have removed the files).
    kserve_kube.delete(CACHES, "tiny")
    nowhere = dict.fromkeys(ALL_NODES, False)
    await eventually(lambda: _labelled(kserve_kube) == nowhere, "every label removed", 10)
    assert H100 not in {n for n, has in _labelled(kserve_kube).items() if has}


async def test_a_cache_larger_than_a_groups_storage_limit_is_refused_with_the_numbers(
    admission_cluster: tuple[Cluster, Webhooks],
) -> None:
    _, webhooks = admission_cluster
    big = cache("big", "hf://acme/big-model", "20Gi", "a100")
    response = await webhooks.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="CREATE", name="big", object=big
    )
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    message = response["status"]["message"]
    assert "big (20Gi) does not fit node group a100 (storageLimit 10Gi)" in message
    assert "raise its storageLimit or remove a100 from nodeGroups" in message
    fitting = cache("small", "hf://acme/small-model", "1Gi", "a100")
    response = await webhooks.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="CREATE", name="small", object=fitting
    )
    assert response["allowed"] is True
