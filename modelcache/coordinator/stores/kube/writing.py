"""Writing to the cluster: spec and metadata through create/replace with optimistic concurrency,
finalizers and statuses as JSON merge patches that carry only what changed (a key that went away
is sent as null), LocalModelNodes made on first write, 409 Conflict retried on a fresh read, and
Node labels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kubernetes_asyncio import client

from modelcache.contract.errors import ModelCacheError
from modelcache.contract.objects import CACHE_FINALIZER, GROUP, NODE_KIND, VERSION, JsonObject
from modelcache.coordinator.stores.base import (
    ObjectConflictError,
    ObjectNotFoundError,
    StatusBatch,
    StoreUnavailableError,
)
from modelcache.coordinator.stores.kube.client import (
    AS_MERGE_PATCH,
    CACHES,
    GROUPS,
    NODES,
    KubeConnection,
)

CONFLICT_RETRIES = 5
WRITE_CONCURRENCY = 16


@dataclass
class ServerView:
    """What the server holds, as last watched or written, so that writes carry only changes."""

    statuses: dict[tuple[str, str], Any] = field(default_factory=dict)  # (plural, name) -> status
    node_objects: set[str] = field(default_factory=set)  # LocalModelNodes that exist on the server


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


class Writer:
    """Every write the store makes; at most WRITE_CONCURRENCY of them in flight at once."""

    def __init__(self, connection: KubeConnection, view: ServerView) -> None:
        self._connection = connection
        self._view = view
        self._status_on_main: set[str] = set()  # plurals whose CRD has no status subresource
        self._limit = asyncio.Semaphore(WRITE_CONCURRENCY)

    # --- objects --------------------------------------------------------------------------------

    async def put(self, plural: str, raw: JsonObject) -> JsonObject:
        custom = await self._connection.custom()
        name = raw["metadata"]["name"]
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await self.get(plural, name)
            except ObjectNotFoundError:
                body = {k: v for k, v in raw.items() if k != "status"}
                if plural == CACHES:
                    body["metadata"] = {**body["metadata"], "finalizers": [CACHE_FINALIZER]}
                created: JsonObject = await self._connection.call(
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
                replaced: JsonObject = await self._connection.call(
                    partial(
                        custom.replace_cluster_custom_object, GROUP, VERSION, plural, name, body
                    ),
                    f"replacing {plural}/{name}",
                )
                return replaced
            except ObjectConflictError:
                continue  # changed between our read and write: read again
        raise ObjectConflictError(f"{plural}/{name} keeps changing under us; try again")

    async def get(self, plural: str, name: str) -> JsonObject:
        custom = await self._connection.custom()
        got: JsonObject = await self._connection.call(
            lambda: custom.get_cluster_custom_object(GROUP, VERSION, plural, name),
            f"reading {plural}/{name}",
        )
        return got

    async def delete(self, plural: str, name: str) -> None:
        custom = await self._connection.custom()
        await self._connection.call(
            lambda: custom.delete_cluster_custom_object(GROUP, VERSION, plural, name),
            f"deleting {plural}/{name}",
        )

    # --- finalizers -----------------------------------------------------------------------------

    async def _set_finalizers(self, name: str, change: Callable[[list[str]], list[str]]) -> None:
        custom = await self._connection.custom()
        for _ in range(CONFLICT_RETRIES):
            try:
                current = await self.get(CACHES, name)
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
                await self._connection.call(
                    partial(
                        custom.patch_cluster_custom_object,
                        GROUP,
                        VERSION,
                        CACHES,
                        name,
                        patch,
                        **AS_MERGE_PATCH,
                    ),
                    f"updating finalizers of {name}",
                )
                return
            except ObjectConflictError:
                continue
        raise ObjectConflictError(f"finalizers of {name} keep changing under us")

    async def add_finalizer(self, name: str) -> None:
        # Decided on the object as read now: the watch event that asked for it may be older
        # than a finalizer added since (two events queued before the first patch landed).
        await self._set_finalizers(
            name, lambda f: f if CACHE_FINALIZER in f else [*f, CACHE_FINALIZER]
        )

    async def remove_finalizer(self, name: str) -> None:
        await self._set_finalizers(name, lambda f: [x for x in f if x != CACHE_FINALIZER])

    # --- statuses -------------------------------------------------------------------------------

    async def write(self, batch: StatusBatch) -> None:
        writes: list[Awaitable[None]] = []
        writes += [self._write_status(CACHES, n, s.value()) for n, s in batch.caches.items()]
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
        old = self._view.statuses.get((plural, name), {})
        patch = merge_patch(old, status)
        if patch is None:
            return
        custom = await self._connection.custom()
        async with self._limit:
            for attempt in range(CONFLICT_RETRIES):
                on_main = plural in self._status_on_main
                call = (
                    custom.patch_cluster_custom_object
                    if on_main
                    else custom.patch_cluster_custom_object_status
                )
                try:
                    await self._connection.call(
                        partial(
                            call, GROUP, VERSION, plural, name, {"status": patch}, **AS_MERGE_PATCH
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
        self._view.statuses[(plural, name)] = status

    async def _write_node(self, obj: JsonObject) -> None:
        name = obj["metadata"]["name"]
        if name not in self._view.node_objects:
            custom = await self._connection.custom()
            body = {k: v for k, v in obj.items() if k != "status"}
            async with self._limit:
                # It may exist already (made before we listed): then patch it below.
                with contextlib.suppress(ObjectConflictError):
                    await self._connection.call(
                        lambda: custom.create_cluster_custom_object(GROUP, VERSION, NODES, body),
                        f"creating {NODE_KIND} {name}",
                    )
            self._view.node_objects.add(name)
        await self._patch_node_spec(name, obj["spec"])
        await self._write_status(NODES, name, obj["status"])

    async def _patch_node_spec(self, name: str, spec: JsonObject) -> None:
        if self._view.statuses.get(("spec", name)) == spec:
            return
        custom = await self._connection.custom()
        async with self._limit:
            await self._connection.call(
                lambda: custom.patch_cluster_custom_object(
                    GROUP, VERSION, NODES, name, {"spec": spec}, **AS_MERGE_PATCH
                ),
                f"writing the spec of {NODE_KIND} {name}",
            )
        self._view.statuses[("spec", name)] = spec

    async def _delete_node(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            await self.delete(NODES, name)
        self._view.node_objects.discard(name)
        self._view.statuses.pop((NODES, name), None)

    # --- node labels ----------------------------------------------------------------------------

    async def patch_node_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        """Merge patch of the Node's metadata.labels (None removes); a Node that is gone is
        nothing to label. Needs `patch` on nodes."""
        core = client.CoreV1Api(await self._connection.api_client())
        body = {"metadata": {"labels": dict(labels)}}
        async with self._limit:
            with contextlib.suppress(ObjectNotFoundError):
                await self._connection.call(
                    lambda: core.patch_node(node, body, **AS_MERGE_PATCH),
                    f"labelling node {node}",
                )
