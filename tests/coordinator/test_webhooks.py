"""The admission routes over real HTTPS: AdmissionReview fixtures in, decisions and patches out."""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
import trustme
from aiohttp import web

from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.binding import LOCAL_MODEL_LABEL, PVC_NAME_ANNOTATION, model_node_label
from modelcache.coordinator.webhooks import (
    MUTATE_ISVC_PATH,
    VALIDATE_CACHE_PATH,
    build_webhook_app,
    serving_ssl_context,
)
from tests.coordinator.test_binding import LLAMA, Cluster, cache_raw, cluster, isvc

CACHE_KIND = {"group": "serving.kserve.io", "version": "v1alpha1", "kind": "LocalModelCache"}
ISVC_KIND = {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"}


@dataclass
class Webhook:
    url: str
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.url + path, data=data, headers=headers) as response:
            return response.status, orjson.loads(await response.read())

    async def review(self, path: str, **request: Any) -> Any:
        uid = str(uuid.uuid4())
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": uid, **request},
        }
        status, answer = await self.post(path, review)
        assert status == 200, answer
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == uid
        return answer["response"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def serve(app: web.Application, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Webhook]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=serving_ssl_context(chain, key))
        await site.start()
        port = runner.addresses[0][1]
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        connector = aiohttp.TCPConnector(ssl=client_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Webhook(f"https://127.0.0.1:{port}", session)
    finally:
        await runner.cleanup()


@pytest.fixture
def view() -> Cluster:
    return cluster()


@pytest.fixture
async def webhook(view: Cluster, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Webhook]:
    async for served in serve(build_webhook_app(view), ca, tmp_path):
        yield served


def patched(obj: Any, response: Any) -> Any:
    assert response["patchType"] == "JSONPatch"
    ops = orjson.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(obj, ops)


async def test_a_matching_isvc_is_bound_through_a_json_patch(webhook: Webhook) -> None:
    obj = isvc()
    response = await webhook.review(
        MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", namespace="team-a", object=obj
    )
    assert response["allowed"] is True
    result = patched(obj, response)
    assert result["metadata"]["labels"] == {LOCAL_MODEL_LABEL: "llama"}
    assert result["metadata"]["annotations"][PVC_NAME_ANNOTATION] == "llama-a100"
    node_affinity = result["spec"]["predictor"]["affinity"]["nodeAffinity"]
    (term,) = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"][0]["key"] == model_node_label(storage_key(LLAMA))
    assert "warnings" not in response


async def test_binding_before_a_download_finishes_warns_that_pods_wait(
    webhook: Webhook, view: Cluster
) -> None:
    view.downloaded = {}
    obj = isvc()
    response = await webhook.review(
        MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", namespace="team-a", object=obj
    )
    assert response["allowed"] is True
    assert patched(obj, response)["metadata"]["labels"] == {LOCAL_MODEL_LABEL: "llama"}
    (warning,) = response["warnings"]
    assert "pods stay Pending until a download finishes" in warning


async def test_unmatched_opted_out_and_deleted_isvcs_get_no_patch(webhook: Webhook) -> None:
    for operation, obj in (
        ("CREATE", isvc(uri="s3://bucket/other")),
        ("UPDATE", isvc(annotations={"serving.kserve.io/disable-localmodel": "true"})),
        ("DELETE", None),
    ):
        response = await webhook.review(
            MUTATE_ISVC_PATH, kind=ISVC_KIND, operation=operation, object=obj, oldObject=isvc()
        )
        assert response["allowed"] is True
        assert "patch" not in response
        assert "patchType" not in response


async def test_refusals_carry_a_code_and_the_reason(webhook: Webhook) -> None:
    response = await webhook.review(
        MUTATE_ISVC_PATH,
        kind=ISVC_KIND,
        operation="CREATE",
        object=isvc(annotations={"serving.kserve.io/nodegroup": "t4"}),
    )
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "asks for node group 't4'" in response["status"]["message"]
    assert "patch" not in response
    too_big = cache_raw("big", "hf://org/big", "60Gi", "h100")
    response = await webhook.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="CREATE", name="big", object=too_big
    )
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 422,
        "message": "LocalModelCache big: model big (60Gi) does not fit node group h100 "
        "(storageLimit 50Gi): raise its storageLimit or remove h100 from nodeGroups",
    }


async def test_a_cache_is_admitted_and_deleted_only_when_unused(
    webhook: Webhook, view: Cluster
) -> None:
    fresh = cache_raw("mistral", "hf://mistralai/mistral-7b", "14Gi", "a100")
    response = await webhook.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="CREATE", name="mistral", object=fresh
    )
    assert response == {"uid": response["uid"], "allowed": True}
    view.users = {"llama": [("team-a", "chat")]}
    stored = cache_raw("llama", LLAMA, "10Gi", "a100")
    response = await webhook.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="DELETE", name="llama", oldObject=stored
    )
    assert response["allowed"] is False
    assert response["status"]["code"] == 409
    assert "used by InferenceService team-a/chat" in response["status"]["message"]
    view.users = {}  # the InferenceService is gone
    response = await webhook.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="DELETE", name="llama", oldObject=stored
    )
    assert response["allowed"] is True


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "the body is not JSON"),
        (b"", "the body is not JSON"),
        ([1, 2], "not an AdmissionReview"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "not supported"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "has no request"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
            "request.uid is missing",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": "PATCH", "kind": CACHE_KIND},
            },
            "request.operation 'PATCH'",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": "CREATE"},
            },
            "request.kind",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": "CREATE", "kind": CACHE_KIND, "object": "x"},
            },
            "request.object is not an object",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": "CREATE", "kind": ISVC_KIND, "object": {}},
            },
            "admits serving.kserve.io/LocalModelCache, not serving.kserve.io/InferenceService",
        ),
    ],
)
async def test_malformed_reviews_answer_400_with_a_message(
    webhook: Webhook, body: Any, fragment: str
) -> None:
    status, answer = await webhook.post(VALIDATE_CACHE_PATH, body)
    assert status == 400
    assert fragment in answer["error"]


async def test_odd_objects_inside_a_valid_review_never_answer_500(webhook: Webhook) -> None:
    odd = isvc(affinity=None)
    odd["metadata"]["labels"] = None
    response = await webhook.review(
        MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", object=odd
    )
    assert response["allowed"] is True
    assert "nodeAffinity" in patched(odd, response)["spec"]["predictor"]["affinity"]
    odd["spec"]["predictor"]["model"]["resources"] = {"limits": {"nvidia.com/gpu": "lots"}}
    response = await webhook.review(
        MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", object=odd
    )
    assert response["allowed"] is False
    assert "'lots' is not a quantity" in response["status"]["message"]
    odd_shapes: list[dict[str, Any]] = [{"spec": []}, {"spec": {"predictor": "x"}}, {}]
    for obj in odd_shapes:
        response = await webhook.review(
            MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", object=obj
        )
        assert response["allowed"] is True
        assert "patch" not in response
    response = await webhook.review(
        VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="CREATE", object={"spec": []}
    )
    assert response["allowed"] is False
    assert response["status"]["code"] == 422


class BrokenCluster(Cluster):
    """A coordinator view with a bug in it."""

    def admitted_groups(self, cache_name: str) -> Sequence[str]:
        raise RuntimeError("placement exploded")

    def inference_services_using(self, cache_name: str) -> Sequence[tuple[str, str]]:
        raise RuntimeError("tracking exploded")


async def test_a_bug_of_ours_fails_open_for_isvcs_and_closed_for_caches(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = cluster()
    broken = BrokenCluster(
        base.cache_list, base.group_list, base.members, base.downloaded, base.gpus
    )
    async for webhook in serve(build_webhook_app(broken), ca, tmp_path):
        response = await webhook.review(
            MUTATE_ISVC_PATH, kind=ISVC_KIND, operation="CREATE", object=isvc()
        )
        assert response["allowed"] is True
        assert "patch" not in response
        assert "downloads its model from the source" in response["warnings"][0]
        response = await webhook.review(
            VALIDATE_CACHE_PATH, kind=CACHE_KIND, operation="DELETE", name="llama"
        )
        assert response["allowed"] is False
        assert response["status"]["code"] == 500
    assert "placement exploded" in caplog.text


async def test_a_client_that_does_not_trust_the_ca_cannot_talk_to_it(webhook: Webhook) -> None:
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.get(webhook.url + "/healthz")
    async with webhook.session.get(webhook.url + "/healthz") as response:
        assert response.status == 200
