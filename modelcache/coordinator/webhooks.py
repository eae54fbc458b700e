"""The admission webhooks over HTTPS: AdmissionReview v1 in, AdmissionReview out.

``POST /validate-localmodelcache`` backs a ValidatingWebhookConfiguration for LocalModelCache
CREATE, UPDATE and DELETE; ``POST /mutate-inferenceservice`` backs a MutatingWebhookConfiguration
for InferenceService (``serving.kserve.io/v1beta1``) CREATE and UPDATE. The decisions are
`binding`'s; this module only reads reviews, writes responses and encodes mutations as JSON Patch.

A review we cannot read answers 400 with ``{"error": ...}`` (the API server then applies the
webhook's failurePolicy); everything else answers 200 with the decision inside. Not even a bug of
ours answers 500: the validating route then refuses (a cache check we could not make is no check),
the mutating route admits the InferenceService unbound with a warning (it downloads from its source
as it would without a cache). Both are logged with the traceback.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NotRequired, TypedDict

import orjson
from aiohttp import web

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import CACHE_KIND, GROUP, JsonObject
from modelcache.coordinator.binding import (
    AdmissionView,
    BindingSettings,
    Verdict,
    admit_cache,
    bind_inference_service,
)

log = logging.getLogger(__name__)

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
VALIDATE_CACHE_PATH: Final = "/validate-localmodelcache"
MUTATE_ISVC_PATH: Final = "/mutate-inferenceservice"
ISVC_KIND: Final = "InferenceService"
_OPERATIONS: Final = ("CREATE", "UPDATE", "DELETE", "CONNECT")
_MAX_REVIEW_BYTES: Final = 8 << 20  # an object (etcd keeps up to 1.5 MiB) and its old version


class RawStatus(TypedDict):
    code: int
    message: str


class RawAdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[RawStatus]
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]  # base64 of the JSON Patch
    warnings: NotRequired[list[str]]


class RawAdmissionReview(TypedDict):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    response: RawAdmissionResponse


class MalformedReviewError(UsageError):
    """The body is not an AdmissionReview v1 this route can answer."""


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    uid: str
    group: str
    kind: str
    operation: str
    name: str
    namespace: str
    object: JsonObject | None
    old_object: JsonObject | None


def parse_review(body: bytes) -> AdmissionRequest:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedReviewError(f"the body is not JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("kind") != "AdmissionReview":
        raise MalformedReviewError("the body is not an AdmissionReview")
    if raw.get("apiVersion") != ADMISSION_API_VERSION:
        raise MalformedReviewError(
            f"AdmissionReview {raw.get('apiVersion')!r} is not supported: list only "
            f"{ADMISSION_API_VERSION!r} in the webhook's admissionReviewVersions"
        )
    request = raw.get("request")
    if not isinstance(request, dict):
        raise MalformedReviewError("the AdmissionReview has no request")
    uid, operation, kind = request.get("uid"), request.get("operation"), request.get("kind")
    if not isinstance(uid, str) or not uid:
        raise MalformedReviewError("request.uid is missing")
    if operation not in _OPERATIONS:
        raise MalformedReviewError(f"request.operation {operation!r} is not one of {_OPERATIONS}")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise MalformedReviewError("request.kind {group, version, kind} is missing")
    objects = []
    for field in ("object", "oldObject"):
        value = request.get(field)
        if value is not None and not isinstance(value, dict):
            raise MalformedReviewError(f"request.{field} is not an object")
        objects.append(value)
    return AdmissionRequest(
        uid=uid,
        group=str(kind.get("group", "")),
        kind=kind["kind"],
        operation=operation,
        name=str(request.get("name") or ""),
        namespace=str(request.get("namespace") or ""),
        object=objects[0],
        old_object=objects[1],
    )


def json_pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(before: Any, after: Any, path: str = "") -> list[JsonObject]:
    """RFC 6902 operations turning `before` into `after`: maps are diffed key by key (a map that
    is missing is added whole), anything else that differs is replaced whole."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        ops: list[JsonObject] = [
            {"op": "remove", "path": f"{path}/{json_pointer_token(k)}"}
            for k in sorted(before.keys() - after.keys())
        ]
        for key, value in after.items():
            pointer = f"{path}/{json_pointer_token(key)}"
            if key in before:
                ops.extend(json_patch(before[key], value, pointer))
            else:
                ops.append({"op": "add", "path": pointer, "value": value})
        return ops
    if type(before) is type(after) and before == after:
        return []
    return [{"op": "replace", "path": path, "value": after}]


def review_response(request: AdmissionRequest, verdict: Verdict) -> RawAdmissionReview:
    response: RawAdmissionResponse = {"uid": request.uid, "allowed": verdict.allowed}
    if verdict.message or not verdict.allowed:
        response["status"] = {"code": verdict.code, "message": verdict.message}
    if verdict.allowed and verdict.mutated is not None:
        ops = json_patch(request.object or {}, verdict.mutated)
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(ops)).decode()
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def serving_ssl_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """The server side of the webhook's TLS (the API server insists on HTTPS). Reads the files:
    call it at startup, outside the event loop or through `asyncio.to_thread`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


@dataclass(frozen=True, slots=True)
class Webhooks:
    view: AdmissionView
    settings: BindingSettings


WEBHOOKS = web.AppKey("webhooks", Webhooks)
Decide = Callable[[Webhooks, AdmissionRequest], Verdict]


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


async def _answer(
    request: web.Request, group: str, kind: str, decide: Decide, fallback: Verdict
) -> web.Response:
    try:
        review = parse_review(await request.read())
    except MalformedReviewError as e:
        return _error(400, f"{request.path}: {e}")
    if (review.group, review.kind) != (group, kind):
        return _error(
            400,
            f"{request.path} admits {group}/{kind}, not {review.group}/{review.kind}: fix the "
            "webhook configuration's rules",
        )
    try:
        verdict = decide(request.app[WEBHOOKS], review)
    except Exception:  # a bug of ours must not turn into a 500 for the API server
        log.exception("admission of %s %s %s failed", review.operation, kind, review.name)
        verdict = fallback
    if not verdict.allowed:
        log.info("refused %s %s %s: %s", review.operation, kind, review.name, verdict.message)
    return web.Response(
        body=orjson.dumps(review_response(review, verdict)), content_type="application/json"
    )


def _decide_cache(hooks: Webhooks, review: AdmissionRequest) -> Verdict:
    if review.operation == "CONNECT":
        return Verdict(True)
    metadata = (review.object or review.old_object or {}).get("metadata")
    name = review.name or str(metadata.get("name", "") if isinstance(metadata, dict) else "")
    return admit_cache(review.operation, review.object, review.old_object, name, hooks.view)


def _decide_isvc(hooks: Webhooks, review: AdmissionRequest) -> Verdict:
    if review.operation not in ("CREATE", "UPDATE") or review.object is None:
        return Verdict(True)
    return bind_inference_service(review.object, hooks.view, hooks.settings, review.namespace)


async def validate_cache(request: web.Request) -> web.Response:
    fallback = Verdict(
        False,
        "modelcache could not check this LocalModelCache (an internal error, logged by the "
        "coordinator): retry, and report it if it persists",
        500,
    )
    return await _answer(request, GROUP, CACHE_KIND, _decide_cache, fallback)


async def mutate_inference_service(request: web.Request) -> web.Response:
    fallback = Verdict(
        True,
        warnings=(
            "modelcache could not bind this InferenceService to a local model cache (an internal "
            "error, logged by the coordinator): it downloads its model from the source",
        ),
    )
    return await _answer(request, GROUP, ISVC_KIND, _decide_isvc, fallback)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_webhook_app(
    view: AdmissionView, settings: BindingSettings | None = None
) -> web.Application:
    """The admission routes, to be served over HTTPS (`serving_ssl_context`)."""
    app = web.Application(client_max_size=_MAX_REVIEW_BYTES)
    app[WEBHOOKS] = Webhooks(view, settings or BindingSettings())
    app.router.add_post(VALIDATE_CACHE_PATH, validate_cache)
    app.router.add_post(MUTATE_ISVC_PATH, mutate_inference_service)
    app.router.add_get("/healthz", healthz)
    return app
