"""The Kubernetes store: the real CRs, through kubernetes_asyncio (the only module that imports it).

Reads: list, then watch from the list's resourceVersion with bookmarks; a 410 Gone re-lists (the
registry is replaced with the listing, so deletions missed while away are noticed too); each
node's last report comes back from its LocalModelNode (`restoring.py`) at load. Writes:
spec and metadata through create/replace with optimistic concurrency, statuses through the status
subresource as JSON merge patches that carry only what changed (a key that went away is sent as
null), 409 Conflict retried on a fresh read. The leader-election Lease is read and replaced at
the version read (`leading.py` runs the election), and the leader labels its own pod for the
Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from modelcache.contract.errors import ModelCacheError
from modelcache.contract.objects import (
    CACHE_FINALIZER,
    GROUP,
    NODE_KIND,
    VERSION,
    FieldError,
    JsonObject,
)
from modelcache.coordinator.binding import GPU_RESOURCE
from modelcache.coordinator.node_labelling import model_label_keys
from modelcache.coordinator.nodes import allocatable_count
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.restoring import restore_from_node_object
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.stores.base import (
    LeaseRecord,
    ObjectConflictError,
    ObjectNotFoundError,
    ReviewedToken,
    StatusBatch,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
CACHES, GROUPS, NODES = "localmodelcaches", "localmodelnodegroups", "localmodelnodes"
# KServe's InferenceServices (namespaced, listed across namespaces), when its CRD is installed.
ISVCS, ISVC_VERSION = "inferenceservices", "v1beta1"
MERGE_PATCH = "application/merge-patch+json"
# The client sends dict bodies as json-patch unless told otherwise (see FIELD-NOTES).
_AS_MERGE_PATCH: dict[str, Any] = {"_content_type": MERGE_PATCH}
_RAW: dict[str, Any] = {"_preload_content": False}  # JSON as sent, not the client's models
WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version
CONFLICT_RETRIES = 5
WRITE_CONCURRENCY = 16
REVIEW_CONCURRENCY = 16  # 10,000 agents starting at once must not open 10,000 connections
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns `old` into `new` (None where nothing changed)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch or None


class KubeStore:
    name = "kube"
    keeps_node_objects = True
    keeps_agent_records = False  # LocalModelNode objects are its record of each node

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self._api_client: client.ApiClient | None = None
        self._versions: dict[str, str] = {}  # plural -> resourceVersion to watch from
        self._statuses: dict[tuple[str, str], Any] = {}  # (plural, name) -> status on the server
        self._node_objects: set[str] = set()  # LocalModelNodes that exist on the server
        self._status_on_main: set[str] = set()  # plurals whose CRD has no status subresource
        self._limit = asyncio.Semaphore(WRITE_CONCURRENCY)
        self._review_limit = asyncio.Semaphore(REVIEW_CONCURRENCY)

    # --- connection -----------------------------------------------------------------------------

    async def _client(self) -> client.ApiClient:
        if self._api_client is None:
            configuration = client.Configuration()
            kubeconfig = self.settings.store.kubeconfig
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

    async def _call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await call()
        except ApiException as e:
            raise _translate(e, what) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise StoreUnavailableError(f"Kubernetes API unreachable while {what}: {e}") from e

    async def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(await self._client())

    # --- reading --------------------------------------------------------------------------------

    async def load(self, registry: Registry) -> None:
        for plural in (GROUPS, CACHES, "nodes"):
            await self._relist(registry, plural)
        for item in await self._relist(registry, NODES):
            restore_from_node_object(registry, item)
        await self._load_inference_services(registry)

    async def _list(self, plural: str) -> JsonObject:
        api_client = await self._client()
        if plural == "nodes":
            core = client.CoreV1Api(api_client)
            raw_kwargs: dict[str, Any] = {"_preload_content": False}

            async def list_nodes() -> JsonObject:
                return await _read_json(await core.list_node(**raw_kwargs))

            return await self._call(list_nodes, "listing nodes")
        custom = await self._custom()
        listing: JsonObject = await self._call(
            lambda: custom.list_cluster_custom_object(GROUP, _version(plural), plural),
            f"listing {plural}",
        )
        return listing

    async def _relist(self, registry: Registry, plural: str) -> list[JsonObject]:
        listing = await self._list(plural)
        self._versions[plural] = listing["metadata"]["resourceVersion"]
        items = listing.get("items", [])
        names = {item["metadata"]["name"] for item in items}
        if plural == CACHES:
            for gone in set(registry.caches) - names:
                registry.remove_cache(gone)
        elif plural == GROUPS:
            for gone in set(registry.groups) - names:
                registry.remove_group(gone)
        elif plural == ISVCS:
            registry.inference_services.clear()
        elif plural == "nodes":
            for gone in [n for n, r in registry.nodes.items() if r.in_cluster and n not in names]:
                registry.remove_cluster_node(gone)
        for item in items:
            await self._apply(registry, plural, "ADDED", item)
        return list(items)

    async def follow(self, registry: Registry) -> None:
        async with asyncio.TaskGroup() as group:
            isvcs = (ISVCS,) if registry.inference_services.watched else ()
            for plural in (GROUPS, CACHES, "nodes", *isvcs):
                group.create_task(self._watch(registry, plural), name=f"kube-watch-{plural}")

    async def _watch(self, registry: Registry, plural: str) -> None:
        delay = 0.5
        while True:
            try:
                await self._watch_once(registry, plural)
                delay = 0.5
            except ApiException as e:
                if e.status == 410:  # our version fell out of the server's history
                    log.info("watch of %s expired (410); listing again", plural)
                    await self._relist_retrying(registry, plural)
                    continue
                log.warning("watch of %s failed (%s); retrying in %.1fs", plural, e.status, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
            except (aiohttp.ClientError, TimeoutError, StoreUnavailableError) as e:
                log.warning("watch of %s lost (%s); retrying in %.1fs", plural, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _relist_retrying(self, registry: Registry, plural: str) -> None:
        delay = 0.5
        while True:
            try:
                await self._relist(registry, plural)
                return
            except StoreUnavailableError as e:
                log.warning("listing %s failed (%s); retrying in %.1fs", plural, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _watch_once(self, registry: Registry, plural: str) -> None:
        api_client = await self._client()
        kwargs: dict[str, Any] = {
            "resource_version": self._versions[plural],
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
        }
        if plural == "nodes":
            func: Any = client.CoreV1Api(api_client).list_node
            args: tuple[Any, ...] = ()
        else:
            func = client.CustomObjectsApi(api_client).list_cluster_custom_object
            args = (GROUP, _version(plural), plural)
        async with watch.Watch() as stream:
            async for event in stream.stream(func, *args, **kwargs):
                raw = event["raw_object"]
                version = raw.get("metadata", {}).get("resourceVersion")
                if version:
                    self._versions[plural] = version
                if event["type"] != "BOOKMARK":
                    await self._apply(registry, plural, event["type"], raw)

    async def _apply(self, registry: Registry, plural: str, kind: str, raw: JsonObject) -> None:
        name = raw["metadata"]["name"]
        if plural == ISVCS:
            registry.inference_services.observe(kind, raw)
            return
        if plural == NODES:  # ours: only remember what exists and what its status is
            if kind == "DELETED":
                self._node_objects.discard(name)
                self._statuses.pop((NODES, name), None)
            else:
                self._node_objects.add(name)
                self._statuses[(NODES, name)] = raw.get("status") or {}
                self._statuses[("spec", name)] = raw.get("spec") or {}
            return
        if plural == "nodes":
            if kind == "DELETED":
                registry.remove_cluster_node(name)
                return
            labels = raw.get("metadata", {}).get("labels") or {}
            conditions = raw.get("status", {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            registry.upsert_cluster_node(
                name,
                labels.get(self.settings.node_group_label),
                ready,
                allocatable_gpus=allocatable_count(raw, GPU_RESOURCE),
                model_labels=model_label_keys(labels),
            )
            return
        if kind == "DELETED":
            self._statuses.pop((plural, name), None)
            (registry.remove_cache if plural == CACHES else registry.remove_group)(name)
            return
        self._statuses[(plural, name)] = raw.get("status") or {}
        try:
            if plural == CACHES:
                registry.upsert_cache(raw)
                metadata = raw["metadata"]
                missing = CACHE_FINALIZER not in (metadata.get("finalizers") or ())
                if missing and not metadata.get("deletionTimestamp"):
                    await self._add_finalizer(name)
            else:
                registry.upsert_group(raw)
        except FieldError as e:
            log.warning("ignoring invalid %s %s: %s", plural, name, e)
        except StoreUnavailableError as e:
            log.warning("could not add the finalizer to %s yet: %s", name, e)

    async def _load_inference_services(self, registry: Registry) -> None:
        """List KServe's InferenceServices (to know which caches are in use) if its CRD exists;
        without it there are none to know of."""
        try:
            await self._relist(registry, ISVCS)
        except ObjectNotFoundError:
            log.info("no InferenceService CRD (%s.%s): not watching them", ISVCS, GROUP)
            return
        registry.inference_services.watched = True

    # --- node labels ----------------------------------------------------------------------------

    async def patch_node_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        """Merge patch of the Node's metadata.labels (None removes); a Node that is gone is
        nothing to label. Needs `patch` on nodes."""
        core = client.CoreV1Api(await self._client())
        body = {"metadata": {"labels": dict(labels)}}
        async with self._limit:
            with contextlib.suppress(ObjectNotFoundError):
                await self._call(
                    lambda: core.patch_node(node, body, **_AS_MERGE_PATCH),
                    f"labelling node {node}",
                )

    # --- agent tokens ---------------------------------------------------------------------------

    async def review_token(self, token: str, audience: str) -> ReviewedToken:
        """Ask the API server who `token` belongs to (needs `create` on tokenreviews)."""
        api = client.AuthenticationV1Api(await self._client())
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience]),
        )
        raw_kwargs: dict[str, Any] = {"_preload_content": False}

        async def review() -> JsonObject:
            return await _read_json(await api.create_token_review(body, **raw_kwargs))

        async with self._review_limit:
            raw = await self._call(review, "reviewing an agent's token")
        return reviewed_token(raw, audience)

    # --- the leader-election Lease --------------------------------------------------------------

    async def get_lease(self, name: str) -> LeaseRecord | None:
        api = client.CoordinationV1Api(await self._client())
        namespace = self.settings.store.namespace

        async def read() -> JsonObject:
            return await _read_json(await api.read_namespaced_lease(name, namespace, **_RAW))

        try:
            return lease_record(await self._call(read, f"reading Lease {namespace}/{name}"))
        except ObjectNotFoundError:
            return None

    async def create_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        api = client.CoordinationV1Api(await self._client())
        namespace = self.settings.store.namespace
        body: Any = raw_lease(name, namespace, record)  # the client sends a dict as it is

        async def create() -> JsonObject:
            return await _read_json(await api.create_namespaced_lease(namespace, body, **_RAW))

        return lease_record(await self._call(create, f"creating Lease {namespace}/{name}"))

    async def update_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        api = client.CoordinationV1Api(await self._client())
        namespace = self.settings.store.namespace
        body: Any = raw_lease(name, namespace, record)  # the client sends a dict as it is

        async def replace() -> JsonObject:
            return await _read_json(
                await api.replace_namespaced_lease(name, namespace, body, **_RAW)
            )

        return lease_record(await self._call(replace, f"updating Lease {namespace}/{name}"))

    # --- the leader's pod label -----------------------------------------------------------------

    async def patch_pod_labels(self, pod: str, labels: Mapping[str, str | None]) -> None:
        """Needs `patch` on pods in the store's namespace (the coordinator's namespaced Role)."""
        core = client.CoreV1Api(await self._client())
        namespace = self.settings.store.namespace
        body = {"metadata": {"labels": dict(labels)}}

        async def patch() -> JsonObject:
            return await _read_json(
                await core.patch_namespaced_pod(pod, namespace, body, **_AS_MERGE_PATCH, **_RAW)
            )

        await self._call(patch, f"labelling pod {namespace}/{pod}")

    # --- writing objects ------------------------------------------------------------------------

    async def _put(self, plural: str, raw: JsonObject) -> JsonObject:
        custom = await self._custom()
        name = raw["metadata"]["name"]
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await self._get(plural, name)
            except ObjectNotFoundError:
                body = {k: v for k, v in raw.items() if k != "status"}
                if plural == CACHES:
                    body["metadata"] = {**body["metadata"], "finalizers": [CACHE_FINALIZER]}
                created: JsonObject = await self._call(
                    partial(custom.create_cluster_custom_object, GROUP, VERSION, plural, body),
                    f"creating {plural}/{name}",
                )
                return created
            metadata = {**current["metadata"]}
            for key in ("labels", "annotations"):
                if key in raw["metadata"]:
                    metadata[key] = raw["metadata"][key]
            body = {**current, "metadata": metadata, "spec": raw["spec"]}
            try:
                replaced: JsonObject = await self._call(
                    partial(
                        custom.replace_cluster_custom_object, GROUP, VERSION, plural, name, body
                    ),
                    f"replacing {plural}/{name}",
                )
                return replaced
            except ObjectConflictError:
                continue  # changed between our read and write: read again
        raise ObjectConflictError(f"{plural}/{name} keeps changing under us; try again")

    async def _get(self, plural: str, name: str) -> JsonObject:
        custom = await self._custom()
        got: JsonObject = await self._call(
            lambda: custom.get_cluster_custom_object(GROUP, VERSION, plural, name),
            f"reading {plural}/{name}",
        )
        return got

    async def put_cache(self, raw: JsonObject) -> JsonObject:
        return await self._put(CACHES, raw)

    async def put_group(self, raw: JsonObject) -> JsonObject:
        return await self._put(GROUPS, raw)

    async def delete_cache(self, name: str) -> JsonObject | None:
        await self._delete(CACHES, name)
        try:
            return await self._get(CACHES, name)
        except ObjectNotFoundError:
            return None

    async def delete_group(self, name: str) -> None:
        await self._delete(GROUPS, name)

    async def _delete(self, plural: str, name: str) -> None:
        custom = await self._custom()
        await self._call(
            lambda: custom.delete_cluster_custom_object(GROUP, VERSION, plural, name),
            f"deleting {plural}/{name}",
        )

    async def _set_finalizers(self, name: str, change: Callable[[list[str]], list[str]]) -> None:
        custom = await self._custom()
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await self._get(CACHES, name)
            except ObjectNotFoundError:
                return
            metadata = current["metadata"]
            wanted = change(list(metadata.get("finalizers") or []))
            if wanted == (metadata.get("finalizers") or []):
                return
            patch = {
                "metadata": {"finalizers": wanted, "resourceVersion": metadata["resourceVersion"]}
            }
            try:
                await self._call(
                    partial(
                        custom.patch_cluster_custom_object,
                        GROUP,
                        VERSION,
                        CACHES,
                        name,
                        patch,
                        **_AS_MERGE_PATCH,
                    ),
                    f"updating finalizers of {name}",
                )
                return
            except ObjectConflictError:
                continue
        raise ObjectConflictError(f"finalizers of {name} keep changing under us")

    async def _add_finalizer(self, name: str) -> None:
        await self._set_finalizers(name, lambda f: [*f, CACHE_FINALIZER])

    async def release_cache(self, name: str) -> None:
        await self._set_finalizers(name, lambda f: [x for x in f if x != CACHE_FINALIZER])

    # --- writing statuses -----------------------------------------------------------------------

    async def write(self, batch: StatusBatch) -> None:
        writes: list[Awaitable[None]] = []
        writes += [self._write_status(CACHES, n, s) for n, s in batch.caches.items()]
        writes += [self._write_status(GROUPS, n, s) for n, s in batch.groups.items()]
        writes += [self._write_node(obj) for obj in batch.nodes.values()]
        writes += [self._delete_node(name) for name in batch.removed_nodes]
        results = await asyncio.gather(*writes, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, ModelCacheError):
                raise failure
        if failures:
            raise StoreUnavailableError(f"{len(failures)} status writes failed: {failures[0]}")

    async def _write_status(self, plural: str, name: str, status: JsonObject) -> None:
        old = self._statuses.get((plural, name), {})
        patch = merge_patch(old, status)
        if patch is None:
            return
        custom = await self._custom()
        async with self._limit:
            for attempt in range(CONFLICT_RETRIES):
                on_main = plural in self._status_on_main
                call = (
                    custom.patch_cluster_custom_object
                    if on_main
                    else custom.patch_cluster_custom_object_status
                )
                try:
                    await self._call(
                        partial(
                            call, GROUP, VERSION, plural, name, {"status": patch}, **_AS_MERGE_PATCH
                        ),
                        f"writing the status of {plural}/{name}",
                    )
                    break
                except ObjectConflictError:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                except ObjectNotFoundError:
                    if on_main or plural != GROUPS:
                        return  # deleted meanwhile: nothing to report on
                    # KServe's LocalModelNodeGroup CRD has no status subresource: status is
                    # then an ordinary field of the object.
                    self._status_on_main.add(plural)
        self._statuses[(plural, name)] = status

    async def _write_node(self, obj: JsonObject) -> None:
        name = obj["metadata"]["name"]
        if name not in self._node_objects:
            custom = await self._custom()
            body = {k: v for k, v in obj.items() if k != "status"}
            async with self._limit:
                # It may exist already (made before we listed): then patch it below.
                with contextlib.suppress(ObjectConflictError):
                    await self._call(
                        lambda: custom.create_cluster_custom_object(GROUP, VERSION, NODES, body),
                        f"creating {NODE_KIND} {name}",
                    )
            self._node_objects.add(name)
        await self._patch_node_spec(name, obj["spec"])
        await self._write_status(NODES, name, obj["status"])

    async def _patch_node_spec(self, name: str, spec: JsonObject) -> None:
        if self._statuses.get(("spec", name)) == spec:
            return
        custom = await self._custom()
        async with self._limit:
            await self._call(
                lambda: custom.patch_cluster_custom_object(
                    GROUP, VERSION, NODES, name, {"spec": spec}, **_AS_MERGE_PATCH
                ),
                f"writing the spec of {NODE_KIND} {name}",
            )
        self._statuses[("spec", name)] = spec

    async def _delete_node(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            await self._delete(NODES, name)
        self._node_objects.discard(name)
        self._statuses.pop((NODES, name), None)


async def _read_json(response: Any) -> JsonObject:
    """The JSON of a raw (`_preload_content=False`) response. The client checks the status only
    when it parses the body itself: here a 404 or 409 would pass for an object."""
    data = await response.read()
    if not 200 <= response.status <= 299:
        failed = ApiException(status=response.status, reason=response.reason)
        failed.body, failed.headers = data, RESTResponse(response, data).getheaders()
        raise failed
    parsed: JsonObject = json.loads(data)
    return parsed


def raw_lease(name: str, namespace: str, record: LeaseRecord) -> JsonObject:
    metadata: JsonObject = {"name": name, "namespace": namespace}
    if record.version:
        metadata["resourceVersion"] = record.version
    spec: JsonObject = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


def lease_record(raw: JsonObject) -> LeaseRecord:
    spec = raw.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str((raw.get("metadata") or {}).get("resourceVersion") or ""),
    )


def _version(plural: str) -> str:
    return ISVC_VERSION if plural == ISVCS else VERSION


def reviewed_token(raw: JsonObject, audience: str) -> ReviewedToken:
    """A TokenReview's status, trusting only what matches the audience we asked for (a server
    that answers without `status.audiences` did not check it: the token is not ours)."""
    status = raw.get("status") or {}
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    audiences = tuple(status.get("audiences") or ())

    def first(key: str) -> str | None:
        values = extra.get(key) or []
        return str(values[0]) if values else None

    authenticated = bool(status.get("authenticated")) and audience in audiences
    error = str(status.get("error") or "")
    if status.get("authenticated") and not authenticated:
        error = f"the token is not for audience {audience!r} (it is for {list(audiences)})"
    return ReviewedToken(
        authenticated=authenticated,
        username=str(user.get("username") or ""),
        node=first(NODE_NAME_KEY),
        pod=first(POD_NAME_KEY),
        audiences=audiences,
        error=error,
    )


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
