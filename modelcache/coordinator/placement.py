"""Which caches each node group admits, and so which models each node must hold (pure functions).

Admission is first come, first served by creation time (then name), so a newer cache never pushes
out an older one: when a group's `storageLimit` shrinks, the newest caches are the ones that stop
fitting. Two caches with the same source share one copy on a node, so the second one costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from modelcache.contract.objects import ModelCache, NodeGroup
from modelcache.contract.quantities import format_quantity

ADMITTED = "Admitted"
GROUP_NOT_FOUND = "NodeGroupNotFound"
EXCEEDS_LIMIT = "ExceedsStorageLimit"
GROUP_FULL = "NodeGroupFull"


@dataclass(frozen=True, slots=True)
class Admission:
    cache: str
    group: str
    admitted: bool
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class DesiredModel:
    """One model folder on a node, wanted by one or more caches."""

    storage_key: str
    source_model_uri: str
    model_size: int
    caches: tuple[str, ...]
    node_group: str
    peer_fetch: bool
    """The group's nodes fetch it from each other: neither the group nor any of these caches
    is annotated modelcache.io/peer-fetch: "false"."""


@dataclass(frozen=True, slots=True)
class Placement:
    admissions: Mapping[str, tuple[Admission, ...]]  # cache name -> one per listed group
    models_by_group: Mapping[str, tuple[DesiredModel, ...]]
    used_by_group: Mapping[str, int] = field(default_factory=dict)

    def admitted_groups(self, cache: str) -> tuple[str, ...]:
        return tuple(a.group for a in self.admissions.get(cache, ()) if a.admitted)

    def desired_for_group(self, group: str | None) -> tuple[DesiredModel, ...]:
        return self.models_by_group.get(group, ()) if group is not None else ()


def byte_quantity(count: int) -> str:
    """Bytes as a Kubernetes quantity a person would write: 6Gi, 500M."""
    return format_quantity(count, "BinarySI" if count % 1024 == 0 else "DecimalSI")


def place(caches: Iterable[ModelCache], groups: Mapping[str, NodeGroup]) -> Placement:
    ordered = sorted(caches, key=lambda c: (c.meta.created, c.name))
    used: dict[str, int] = dict.fromkeys(groups, 0)
    keys_on_group: dict[str, dict[str, list[ModelCache]]] = {g: {} for g in groups}
    admissions: dict[str, tuple[Admission, ...]] = {}
    for cache in ordered:
        if cache.deleting:
            continue
        verdicts = []
        for group_name in cache.node_groups:
            verdict = _admit(cache, groups.get(group_name), group_name, used, keys_on_group)
            verdicts.append(verdict)
        admissions[cache.name] = tuple(verdicts)
    models_by_group = {
        group: tuple(
            DesiredModel(
                storage_key=key,
                source_model_uri=owners[0].source_model_uri,
                model_size=max(c.model_size for c in owners),
                caches=tuple(c.name for c in owners),
                node_group=group,
                peer_fetch=groups[group].peer_fetch and all(c.peer_fetch for c in owners),
            )
            for key, owners in keys.items()
        )
        for group, keys in keys_on_group.items()
    }
    return Placement(admissions, models_by_group, used)


def _admit(
    cache: ModelCache,
    group: NodeGroup | None,
    group_name: str,
    used: dict[str, int],
    keys_on_group: dict[str, dict[str, list[ModelCache]]],
) -> Admission:
    name, size, size_text = cache.name, cache.model_size, cache.model_size_text
    if group is None:
        return Admission(
            name,
            group_name,
            False,
            GROUP_NOT_FOUND,
            f"node group {group_name} does not exist: create a LocalModelNodeGroup named "
            f"{group_name!r}; {name} is placed there as soon as it exists",
        )
    sharing = keys_on_group[group_name].get(cache.storage_key)
    if sharing is not None:  # same source already admitted here: one copy on disk serves both
        sharing.append(cache)
        return Admission(name, group_name, True, ADMITTED, f"shares the copy of {sharing[0].name}")
    limit = group.storage_limit
    if size > limit:
        return Admission(
            name,
            group_name,
            False,
            EXCEEDS_LIMIT,
            f"{name} ({size_text}) does not fit node group {group_name}: its storageLimit is "
            f"{byte_quantity(limit)}; raise storageLimit or remove {group_name} from nodeGroups",
        )
    if used[group_name] + size > limit:
        return Admission(
            name,
            group_name,
            False,
            GROUP_FULL,
            f"{name} ({size_text}) does not fit node group {group_name}: "
            f"{byte_quantity(used[group_name])} of {byte_quantity(limit)} storageLimit already "
            "used; "
            "raise storageLimit or delete an older cache",
        )
    used[group_name] += size
    keys_on_group[group_name][cache.storage_key] = [cache]
    return Admission(
        name,
        group_name,
        True,
        ADMITTED,
        f"{name} ({size_text}) fits node group {group_name}: "
        f"{byte_quantity(used[group_name])} of {byte_quantity(limit)} storageLimit used",
    )
