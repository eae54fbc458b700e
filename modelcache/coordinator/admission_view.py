"""The admission webhooks' view of the coordinator (`binding.AdmissionView`), read straight from
the registry: what the webhooks decide on is what placement and status are computed from.

Every call is a dict lookup or a cached aggregate, cheap enough for the API server's 5 s webhook
timeout with thousands of nodes. InferenceServices in use come from the kube store's watch; on
the embedded store, or without KServe's CRD, none are known and a cache's deletion is never
refused for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelcache.contract.objects import ModelCache, NodeGroup
from modelcache.coordinator.registry import Registry


class RegistryAdmissionView:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def caches(self) -> Mapping[str, ModelCache]:
        return self.registry.caches

    @property
    def groups(self) -> Mapping[str, NodeGroup]:
        return self.registry.groups

    def admitted_groups(self, cache_name: str) -> Sequence[str]:
        return self.registry.placement.admitted_groups(cache_name)

    def group_members(self, group: str) -> Sequence[str]:
        return [record.name for record in self.registry.members(group)]

    def placement_of(self, cache_name: str, group: str) -> Sequence[str]:
        if cache_name not in self.registry.caches:
            return ()
        return self.registry.placement_of(cache_name, group)

    def node_allocatable_gpus(self, node: str) -> int | None:
        record = self.registry.nodes.get(node)
        return record.allocatable_gpus if record is not None else None

    def inference_services_using(self, cache_name: str) -> Sequence[tuple[str, str]]:
        return self.registry.inference_services.using(cache_name)


__all__ = ["RegistryAdmissionView"]
