"""Reading the cluster into the registry: list, then watch from the list's resourceVersion with
bookmarks; a 410 Gone re-lists, and the listing replaces what the registry held, so deletions
missed while away are noticed too."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from modelcache.contract.objects import CACHE_FINALIZER, GROUP, FieldError, JsonObject
from modelcache.coordinator.binding import GPU_RESOURCE
from modelcache.coordinator.node_labelling import model_label_keys
from modelcache.coordinator.nodes import allocatable_count
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.restoring import restore_from_node_object
from modelcache.coordinator.stores.base import ObjectNotFoundError, StoreUnavailableError
from modelcache.coordinator.stores.kube.client import (
    CACHES,
    GROUPS,
    ISVCS,
    NODES,
    KubeConnection,
    api_version,
    read_json,
)
from modelcache.coordinator.stores.kube.writing import ServerView

log = logging.getLogger(__name__)
WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version


class Watcher:
    """Keeps the registry, and the writer's view of what the server holds, current."""

    def __init__(
        self,
        connection: KubeConnection,
        node_group_label: str,
        view: ServerView,
        add_finalizer: Callable[[str], Awaitable[None]],
    ) -> None:
        self._connection = connection
        self._node_group_label = node_group_label
        self._view = view
        self._add_finalizer = add_finalizer
        self._versions: dict[str, str] = {}  # plural -> resourceVersion to watch from

    async def load(self, registry: Registry) -> None:
        for plural in (GROUPS, CACHES, "nodes"):
            await self._relist(registry, plural)
        for item in await self._relist(registry, NODES):
            restore_from_node_object(registry, item)
        await self._load_inference_services(registry)

    async def _list(self, plural: str) -> JsonObject:
        api_client = await self._connection.api_client()
        if plural == "nodes":
            core = client.CoreV1Api(api_client)
            raw_kwargs: dict[str, Any] = {"_preload_content": False}

            async def list_nodes() -> JsonObject:
                return await read_json(await core.list_node(**raw_kwargs))

            return await self._connection.call(list_nodes, "listing nodes")
        custom = await self._connection.custom()
        listing: JsonObject = await self._connection.call(
            lambda: custom.list_cluster_custom_object(GROUP, api_version(plural), plural),
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
            registry.forget_inference_services()
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
        api_client = await self._connection.api_client()
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
            args = (GROUP, api_version(plural), plural)
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
            registry.observe_inference_service(kind, raw)
            return
        view = self._view
        if plural == NODES:  # ours: only remember what exists and what its status is
            if kind == "DELETED":
                view.node_objects.discard(name)
                view.statuses.pop((NODES, name), None)
            else:
                view.node_objects.add(name)
                view.statuses[(NODES, name)] = raw.get("status") or {}
                view.statuses[("spec", name)] = raw.get("spec") or {}
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
                labels.get(self._node_group_label),
                ready,
                allocatable_gpus=allocatable_count(raw, GPU_RESOURCE),
                model_labels=model_label_keys(labels),
            )
            return
        if kind == "DELETED":
            view.statuses.pop((plural, name), None)
            (registry.remove_cache if plural == CACHES else registry.remove_group)(name)
            return
        view.statuses[(plural, name)] = raw.get("status") or {}
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
