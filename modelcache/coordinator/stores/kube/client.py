"""The connection to the API server: credentials, the one ApiClient, and our errors for its
failures (the rest of the package never sees an ApiException or an aiohttp error)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from modelcache.contract.errors import ModelCacheError
from modelcache.contract.objects import VERSION, FieldError, JsonObject
from modelcache.coordinator.stores.base import (
    ObjectConflictError,
    ObjectNotFoundError,
    StoreUnavailableError,
)

T = TypeVar("T")
CACHES, GROUPS, NODES = "localmodelcaches", "localmodelnodegroups", "localmodelnodes"
# KServe's InferenceServices (namespaced, listed across namespaces), when its CRD is installed.
ISVCS, ISVC_VERSION = "inferenceservices", "v1beta1"
MERGE_PATCH = "application/merge-patch+json"
# The client sends dict bodies as json-patch unless told otherwise (see FIELD-NOTES).
AS_MERGE_PATCH: dict[str, Any] = {"_content_type": MERGE_PATCH}
RAW: dict[str, Any] = {"_preload_content": False}  # JSON as sent, not the client's models


class KubeConnection:
    """One ApiClient, made on first use from the kubeconfig (or the pod's service account)."""

    def __init__(self, kubeconfig: Path | None) -> None:
        self._kubeconfig = kubeconfig
        self._api_client: client.ApiClient | None = None

    async def api_client(self) -> client.ApiClient:
        if self._api_client is None:
            configuration = client.Configuration()
            kubeconfig = self._kubeconfig
            try:
                if kubeconfig is not None:
                    await config.load_kube_config(
                        config_file=str(kubeconfig), client_configuration=configuration
                    )
                else:
                    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except (OSError, config.ConfigException) as e:
                raise ModelCacheError(
                    f"cannot load Kubernetes credentials ({kubeconfig or 'in-cluster'}): {e}; "
                    "pass --kubeconfig, or run in a pod with a service account"
                ) from e
            self._api_client = client.ApiClient(configuration)
        return self._api_client

    async def close(self) -> None:
        if self._api_client is not None:
            await self._api_client.close()
            self._api_client = None

    async def call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await call()
        except ApiException as e:
            raise _translate(e, what) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise StoreUnavailableError(f"Kubernetes API unreachable while {what}: {e}") from e

    async def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(await self.api_client())


def api_version(plural: str) -> str:
    return ISVC_VERSION if plural == ISVCS else VERSION


async def read_json(response: Any) -> JsonObject:
    """The JSON of a raw (`_preload_content=False`) response. The client checks the status only
    when it parses the body itself: here a 404 or 409 would pass for an object."""
    data = await response.read()
    if not 200 <= response.status <= 299:
        failed = ApiException(status=response.status, reason=response.reason)
        failed.body, failed.headers = data, RESTResponse(response, data).getheaders()
        raise failed
    parsed: JsonObject = json.loads(data)
    return parsed


def _translate(e: ApiException, what: str) -> ModelCacheError:
    detail = e.reason
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        detail = json.loads(e.body or b"").get("message", detail)
    if e.status == 404:
        return ObjectNotFoundError(f"not found while {what}: {detail}")
    if e.status == 409:
        return ObjectConflictError(f"conflict while {what}: {detail}")
    if e.status in (400, 422):
        return FieldError("body", f"the API server refused it while {what}: {detail}")
    if e.status in (401, 403):
        return ModelCacheError(
            f"the API server denied {what} ({e.status}): {detail}; check the coordinator's RBAC"
        )
    retry_after = None
    if e.headers and e.headers.get("Retry-After", "").isdigit():
        retry_after = float(e.headers["Retry-After"])
    return StoreUnavailableError(
        f"the API server failed while {what} ({e.status}): {detail}", retry_after=retry_after
    )
