"""`KubeStore`: the `Store` (and `TokenReviewer`, `LeaseKeeper`, `PodLabeller`) protocols over the
parts of this package, which share one connection and one view of what the server holds."""

from __future__ import annotations

from collections.abc import Mapping

from modelcache.contract.objects import JsonObject
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.settings import CoordinatorSettings
from modelcache.coordinator.stores.base import (
    LeaseRecord,
    ObjectNotFoundError,
    ReviewedToken,
    StatusBatch,
)
from modelcache.coordinator.stores.kube.client import CACHES, GROUPS, KubeConnection
from modelcache.coordinator.stores.kube.leases import LeaseAccess
from modelcache.coordinator.stores.kube.reviews import TokenReviews
from modelcache.coordinator.stores.kube.watching import Watcher
from modelcache.coordinator.stores.kube.writing import ServerView, Writer


class KubeStore:
    name = "kube"
    keeps_node_objects = True
    keeps_agent_records = False  # LocalModelNode objects are its record of each node

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self._connection = KubeConnection(settings.store.kubeconfig)
        view = ServerView()
        self._writer = Writer(self._connection, view)
        self._watcher = Watcher(
            self._connection, settings.node_group_label, view, self._writer.add_finalizer
        )
        self._reviews = TokenReviews(self._connection)
        self._leases = LeaseAccess(self._connection, settings.store.namespace)

    async def close(self) -> None:
        await self._connection.close()

    # --- reading --------------------------------------------------------------------------------

    async def load(self, registry: Registry) -> None:
        await self._watcher.load(registry)

    async def follow(self, registry: Registry) -> None:
        await self._watcher.follow(registry)

    # --- writing objects ------------------------------------------------------------------------

    async def put_cache(self, raw: JsonObject) -> JsonObject:
        return await self._writer.put(CACHES, raw)

    async def put_group(self, raw: JsonObject) -> JsonObject:
        return await self._writer.put(GROUPS, raw)

    async def delete_cache(self, name: str) -> JsonObject | None:
        await self._writer.delete(CACHES, name)
        try:
            return await self._writer.get(CACHES, name)
        except ObjectNotFoundError:
            return None

    async def delete_group(self, name: str) -> None:
        await self._writer.delete(GROUPS, name)

    async def release_cache(self, name: str) -> None:
        await self._writer.remove_finalizer(name)

    async def write(self, batch: StatusBatch) -> None:
        await self._writer.write(batch)

    async def patch_node_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        """Merge patch of the Node's metadata.labels (None removes); a Node that is gone is
        nothing to label. Needs `patch` on nodes."""
        await self._writer.patch_node_labels(node, labels)

    # --- agent tokens ---------------------------------------------------------------------------

    async def review_token(self, token: str, audience: str) -> ReviewedToken:
        """Ask the API server who `token` belongs to (needs `create` on tokenreviews)."""
        return await self._reviews.review_token(token, audience)

    # --- the leader-election Lease and the leader's pod label -----------------------------------

    async def get_lease(self, name: str) -> LeaseRecord | None:
        return await self._leases.get_lease(name)

    async def create_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        return await self._leases.create_lease(name, record)

    async def update_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        return await self._leases.update_lease(name, record)

    async def patch_pod_labels(self, pod: str, labels: Mapping[str, str | None]) -> None:
        """Needs `patch` on pods in the store's namespace (the coordinator's namespaced Role)."""
        await self._leases.patch_pod_labels(pod, labels)
