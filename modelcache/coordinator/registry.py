"""The coordinator's whole state in memory: objects, nodes, placement, and what changed since the
last status write.

Everything runs on the event loop (no locks). Every mutation re-derives what depends on it and
records the objects whose status must be rewritten in `dirty`; the status writer drains it at its
own pace, so a burst of reports costs one write per object per interval.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelcache.contract.agent_wire import Peer, Registration, StatusReport
from modelcache.contract.objects import (
    API_VERSION,
    JsonObject,
    ModelCache,
    NodeGroup,
    now_rfc3339,
    parse_cache,
    parse_node_group,
)
from modelcache.coordinator.aggregating import CacheAggregate
from modelcache.coordinator.inference_services import InferenceServiceIndex
from modelcache.coordinator.nodes import NodeRecord, serves
from modelcache.coordinator.peering import PeerIndex
from modelcache.coordinator.placement import DesiredModel, Placement, place
from modelcache.coordinator.rendering import ListBody, Rendering
from modelcache.coordinator.statuses import (
    ConditionBook,
    Timing,
    cache_status_json,
    group_status,
    group_usage,
    local_model_node,
)


@dataclass(slots=True)
class Dirty:
    caches: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    removed_nodes: set[str] = field(default_factory=set)

    versions: dict[str, int] = field(default_factory=dict)  # cache -> changes so far, never reset

    def __bool__(self) -> bool:
        return bool(self.caches or self.groups or self.nodes or self.removed_nodes)

    def touch_caches(self, names: Iterable[str]) -> None:
        for name in names:
            self.caches.add(name)
            self.versions[name] = self.versions.get(name, 0) + 1

    def take(self) -> Dirty:
        taken = Dirty(self.caches, self.groups, self.nodes, self.removed_nodes)
        self.caches, self.groups, self.nodes, self.removed_nodes = set(), set(), set(), set()
        return taken


@dataclass(frozen=True, slots=True)
class DeletionProgress:
    done: bool
    waiting_for: tuple[str, ...]
    given_up_on: tuple[str, ...]


class Registry:
    def __init__(
        self,
        *,
        heartbeat_timeout: float,
        not_ready_deletion_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.not_ready_deletion_timeout = not_ready_deletion_timeout
        self._clock = clock
        self.cache_objects: dict[str, JsonObject] = {}
        self.caches: dict[str, ModelCache] = {}
        self.group_objects: dict[str, JsonObject] = {}
        self.groups: dict[str, NodeGroup] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.placement = place((), {})
        self.dirty = Dirty()
        self.conditions = ConditionBook()
        self._members: dict[str, set[str]] = defaultdict(set)  # group -> node names
        self._ready: dict[str, bool] = {}
        # No ready node can go stale before this (the earliest last heartbeat + timeout at the
        # last sweep; later heartbeats only move it out); -inf: something else changed, sweep.
        self._sweep_due = -math.inf
        self._renderings: dict[str, Rendering] = {}  # what REST and the status writer serve
        self.cache_list = ListBody(
            b'{"apiVersion":%s,"kind":"LocalModelCacheList","metadata":{},"items":['
            % orjson.dumps(API_VERSION)
        )
        self._aggregates: dict[str, CacheAggregate] = {}
        # Nodes whose entry in a cache's aggregate must be recomputed; None: rebuild it all.
        self._pending: dict[str, set[str] | None] = {}
        self._reporting: dict[str, set[str]] = defaultdict(set)  # storage key -> nodes holding it
        self._sorted_members: dict[str, list[str]] = {}
        self.inference_services = InferenceServiceIndex()  # filled by the kube store's watch
        self.peers = PeerIndex()
        self._serving_changed: set[str] = set()  # nodes to offer again at `publish_peers`

    # --- desired objects ------------------------------------------------------------------------

    def upsert_cache(self, raw: JsonObject) -> ModelCache:
        cache = parse_cache(raw)
        self.cache_objects[cache.name] = raw
        self.conditions.remember(cache.name, (raw.get("status") or {}).get("conditions"))
        self.caches[cache.name] = cache
        self.dirty.touch_caches((cache.name,))
        self._replace()
        return cache

    def remove_cache(self, name: str) -> None:
        if self.caches.pop(name, None) is not None:
            del self.cache_objects[name]
            self.conditions.forget(name)
            for per_cache in (self._renderings, self._aggregates, self._pending):
                per_cache.pop(name, None)
            self._replace()

    def upsert_group(self, raw: JsonObject) -> NodeGroup:
        group = parse_node_group(raw)
        self.group_objects[group.name] = raw
        self.groups[group.name] = group
        self.dirty.groups.add(group.name)
        self._replace()
        return group

    def remove_group(self, name: str) -> None:
        if self.groups.pop(name, None) is not None:
            del self.group_objects[name]
            self._replace()

    # --- nodes ----------------------------------------------------------------------------------

    def upsert_cluster_node(
        self,
        name: str,
        group: str | None,
        ready: bool,
        *,
        allocatable_gpus: int | None = None,
        model_labels: frozenset[str] = frozenset(),
    ) -> None:
        record = self.nodes.get(name) or self._new_node(name)
        record.in_cluster, record.cluster_group = True, group
        record.allocatable_gpus, record.model_labels = allocatable_gpus, model_labels
        if record.cluster_ready and not ready:
            record.cluster_not_ready_since = self._clock()
        record.cluster_ready = ready
        self._sweep_due = -math.inf
        self._node_moved(record)

    def remove_cluster_node(self, name: str) -> None:
        self.forget_node(name)

    def register(self, name: str, registration: Registration) -> NodeRecord:
        record = self.nodes.get(name) or self._new_node(name)
        record.registration = registration
        record.restored = False
        record.last_seen = self._clock()
        self._sweep_due = -math.inf
        self._node_moved(record)
        return record

    def report(self, name: str, report: StatusReport, applied_generation: int) -> NodeRecord:
        record = self.nodes[name]
        previous = record.report
        record.report = report
        record.applied_generation = applied_generation
        record.last_seen = self._clock()
        record.last_report_time = now_rfc3339()
        changed = previous != report
        serving_moved = False
        if changed:
            self.dirty.nodes.add(name)
            before = previous.models if previous else {}
            for key in before.keys() - report.models.keys():
                self._reporting[key].discard(name)
            for key in report.models:
                self._reporting[key].add(name)
            # Only the caches of the models whose entry changed: a progress report changes one
            # model of the seven or so a node holds, and the others' statuses stay as they are.
            moved = {
                k
                for k in before.keys() | report.models.keys()
                if before.get(k) != report.models.get(k)
            }
            if moved:
                self._mark_caches_with_keys(moved, name)
            serving_moved = any(
                serves(before.get(k)) != serves(report.models.get(k)) for k in moved
            )
        if not self._ready.get(name, False):
            self._readiness_changed(record, ready=True)
        elif serving_moved:  # not for more bytes done: what it serves is the same
            self._serving_changed.add(name)
        return record

    def restore_node(
        self,
        name: str,
        registration: Registration,
        report: StatusReport,
        *,
        ready: bool,
        last_report_time: str | None,
    ) -> None:
        """A node as the store last recorded it, before its agent has spoken to us (a new leader
        taking over, a restart): its report counts as current, so statuses do not regress while
        the agent finds us. Ready then: ready for one heartbeat timeout from now (the agent
        reports within it, or the node turns NotReady as usual). NotReady then: NotReady from
        now, so the wait for it to delete files starts again rather than being given up."""
        record = self.nodes.get(name) or self._new_node(name)
        if record.registration is not None or record.report is not None:
            return  # its agent was quicker
        now = self._clock()
        record.registration = registration
        record.restored = True
        record.report = report
        record.last_seen = now if ready else now - self.heartbeat_timeout - 0.001
        record.last_report_time = last_report_time
        for key in report.models:
            self._reporting[key].add(name)
        self._node_moved(record)
        self._readiness_changed(record, ready=ready)

    def forget_node(self, name: str) -> None:
        record = self.nodes.pop(name, None)
        if record is None:
            return
        for members in self._members.values():
            members.discard(name)
        for holding in self._reporting.values():
            holding.discard(name)
        self._sorted_members.clear()
        self._ready.pop(name, None)
        self._serving_changed.discard(name)
        self._bump(self.peers.forget(name))
        record.changed.set()
        self.dirty.nodes.discard(name)
        self.dirty.removed_nodes.add(name)
        self._touch_node(self.caches, name)
        self.dirty.groups.update(self.groups)

    def _new_node(self, name: str) -> NodeRecord:
        record = NodeRecord(name)
        self.nodes[name] = record
        return record

    def _node_moved(self, record: NodeRecord) -> None:
        group = record.group
        for member_of, members in self._members.items():
            if member_of != group and record.name in members:
                members.discard(record.name)
                self.dirty.groups.add(member_of)
                self._sorted_members.pop(member_of, None)
        if group is not None and record.name not in self._members[group]:
            self._members[group].add(record.name)
            self.dirty.groups.add(group)
            self._sorted_members.pop(group, None)
        self._assign(record)
        self.peers.set_group(record.name, group)
        self._serving_changed.add(record.name)
        self.dirty.nodes.add(record.name)
        self._touch_node(self.caches, record.name)

    # --- derived state --------------------------------------------------------------------------

    def _replace(self) -> None:
        self.placement = place(self.caches.values(), self.groups)
        self.peers.watch(
            {
                group: [m.storage_key for m in models if m.peer_fetch]
                for group, models in self.placement.models_by_group.items()
            }
        )
        for record in self.nodes.values():
            self._assign(record)
        # Not at the next tick: the list that first names a model names its peers too, so the
        # nodes given it together split the origin's chunks from their first request on.
        self.publish_peers()
        self._pending.update(dict.fromkeys(self.caches))  # placement may have changed: rebuild
        self.dirty.touch_caches(self.caches)
        self.dirty.groups.update(self.groups)

    def _assign(self, record: NodeRecord) -> None:
        if record.set_desired(self.placement.desired_for_group(record.group)):
            self.dirty.nodes.add(record.name)
            self._serving_changed.add(record.name)  # what it is told to hold, it serves

    def _mark_caches_with_keys(self, keys: set[str], node: str) -> None:
        self._touch_node([c.name for c in self.caches.values() if c.storage_key in keys], node)

    def _touch_node(self, caches: Iterable[str], node: str) -> None:
        """`node`'s entry in these caches' statuses may have changed."""
        names = list(caches)
        for name in names:
            if name not in self._pending:
                self._pending[name] = {node}
            elif (pending := self._pending[name]) is not None:
                pending.add(node)
        self.dirty.touch_caches(names)

    def publish_peers(self) -> None:
        """Tell the peer index what each node that reported, registered, moved or changed
        readiness since the last call serves its group now: nothing unless it is Ready and its
        agent gave a URL (a node restored from the store has none until it registers). The nodes
        whose peers that changes get one new generation.

        Called once per reconcile tick rather than report by report: in a rollout thousands of
        nodes start pulling within seconds, each changing the lists of the nodes around it, and
        applied one by one that would be dozens of new lists per node (each a long poll answered
        and a list the agent saves). Per tick, it is at most one. Between ticks the lists do not
        change, so a generation always stands for one content."""
        pending, self._serving_changed = self._serving_changed, set()
        offers: dict[str, tuple[str | None, str, frozenset[str]]] = {}
        for name in pending:
            record = self.nodes.get(name)
            if record is None:
                continue  # forgotten: withdrawn at once
            url = record.peer_url if self._ready.get(name, False) else ""
            offers[name] = (record.group, url, record.serving_keys() if url else frozenset())
        self._bump(self.peers.publish(offers))

    def _bump(self, names: Iterable[str]) -> None:
        for name in names:
            record = self.nodes.get(name)
            if record is not None:
                record.bump()

    def _readiness_changed(self, record: NodeRecord, *, ready: bool) -> None:
        self._ready[record.name] = ready
        self._sweep_due = -math.inf  # a node ready again counts in the next bound
        self._serving_changed.add(record.name)
        self.dirty.nodes.add(record.name)
        keys = record.desired_keys() | (set(record.report.models) if record.report else set())
        self._mark_caches_with_keys(set(keys), record.name)

    def sweep_readiness(self) -> None:
        """Notice nodes whose heartbeats stopped (or resumed); called every tick, but a pass over
        the 10,000 nodes is only made once one of them could have gone stale."""
        now = self._clock()
        if now < self._sweep_due:
            return
        due = math.inf
        for record in self.nodes.values():
            ready = record.not_ready_for(now, self.heartbeat_timeout) is None
            if self._ready.get(record.name) != ready:
                self._readiness_changed(record, ready=ready)
            if ready and record.last_seen is not None:
                due = min(due, record.last_seen + self.heartbeat_timeout)
        self._sweep_due = due

    # --- views ----------------------------------------------------------------------------------

    def timing(self) -> Timing:
        return Timing(self._clock(), self.heartbeat_timeout)

    def peers_for(self, record: NodeRecord, model: DesiredModel) -> tuple[Peer, ...]:
        """The nodes `record` may fetch `model` from (none when peer fetching is off for it)."""
        if not model.peer_fetch:
            return ()
        return self.peers.peers(record.name, model.node_group, model.storage_key)

    def members(self, group: str) -> list[NodeRecord]:
        names = self._sorted_members.get(group)
        if names is None:
            names = self._sorted_members[group] = sorted(self._members.get(group, ()))
        return [self.nodes[n] for n in names]

    def catch_up(self, name: str, most: int) -> bool:
        """Bring up to `most` of the cache's pending node entries up to date; True when none
        are left. Lets the reconcile loop do in slices what `aggregate` would do in one
        stretch: at 2,000 reports/s a cache gathers about a thousand changed nodes per tick,
        some 10 ms of work that no request should wait behind."""
        pending = self._pending.get(name, set())
        current = self._aggregates.get(name)
        if pending is None or current is None:
            return True  # a rebuild, left to `aggregate`
        now, timeout = self._clock(), self.heartbeat_timeout
        for _ in range(min(most, len(pending))):
            node = pending.pop()
            current.update(node, self.nodes.get(node), now, timeout)
        return not pending

    def aggregate(self, name: str) -> CacheAggregate:
        """The cache's per-node view, brought up to date."""
        cache = self.caches[name]
        pending = self._pending.pop(name, set())
        current = self._aggregates.get(name)
        now, timeout = self._clock(), self.heartbeat_timeout
        if current is None or pending is None:
            current = CacheAggregate(cache, self.placement.admitted_groups(name))
            for group in current.admitted:
                for node in self._members.get(group, ()):
                    current.update(node, self.nodes[node], now, timeout)
            for node in self._reporting.get(cache.storage_key, ()):
                current.update(node, self.nodes[node], now, timeout)
            self._aggregates[name] = current
        else:
            for node in pending:
                current.update(node, self.nodes.get(node), now, timeout)
        return current

    def observe_inference_service(self, event: str, raw: Mapping[str, Any]) -> None:
        """A watched InferenceService: the caches it joined or left list it in their status."""
        changed = self.inference_services.observe(event, raw)
        self.dirty.touch_caches(changed & self.caches.keys())

    def forget_inference_services(self) -> None:
        """Before a fresh listing of InferenceServices."""
        self.dirty.touch_caches(self.inference_services.clear() & self.caches.keys())

    def cache_with_status(self, name: str) -> JsonObject:
        return {
            **self.cache_objects[name],
            "status": orjson.loads(self.rendering(name, 0.0).status),
        }

    def cache_json(self, name: str, max_age: float) -> bytes:
        """The cache with its status as JSON (see `rendering`)."""
        return self.rendering(name, max_age).body

    def rendering(self, name: str, max_age: float) -> Rendering:
        """The cache's last rendering, rendered again when the cache changed since and that
        rendering is at least `max_age` seconds old: under a stream of reports every cache
        changes all the time. A new spec or metadata (a PUT) is always rendered at once, and so
        is a cache being deleted (its message names the nodes still holding the files)."""
        cache, obj = self.caches[name], self.cache_objects[name]
        version = self.dirty.versions.get(name, 0)
        cached = self._renderings.get(name)
        now = self._clock()
        if (
            cached is not None
            and cached.obj is obj
            and not cache.deleting
            and (cached.version == version or now - cached.at < max_age)
        ):
            return cached
        previous = obj.get("status") or {}
        status = cache_status_json(
            cache,
            self.placement,
            self.aggregate(name),
            self.conditions,
            self.inference_services.status_of(name)
            if self.inference_services.watched
            else list(previous.get("inferenceServices") or []),
            self._deleting_message(cache) if cache.deleting else "",
        )
        self._renderings[name] = rendered = Rendering(version, now, obj, status)
        return rendered

    def _deleting_message(self, cache: ModelCache) -> str:
        progress = self.deletion_progress(cache)
        parts = []
        if progress.waiting_for:
            parts.append(f"waiting for {', '.join(progress.waiting_for)} to remove the files")
        if progress.given_up_on:
            parts.append(
                f"not waiting for {', '.join(progress.given_up_on)}: NotReady for longer than "
                f"{self.not_ready_deletion_timeout:g}s; their files are removed when they return"
            )
        return "; ".join(parts) or "every node has removed the files"

    def group_with_status(self, name: str) -> JsonObject:
        group = self.groups[name]
        status = group_status(group, self.placement, self.members(name))
        return {**self.group_objects[name], "status": status}

    def node_object(self, name: str) -> JsonObject:
        wanted_by = {c.storage_key: c.name for c in self.caches.values()}
        return local_model_node(self.nodes[name], self.timing(), wanted_by)

    def deletion_progress(self, cache: ModelCache) -> DeletionProgress:
        """A deleted cache may lose its finalizer once no node still holds its files for it.

        A node counts as done when its latest report lacks
        the files, when another cache still wants the same files there, when it is gone, or when
        it has been NotReady longer than the configured timeout (then the status says so).
        """
        now = self._clock()
        waiting, given_up = [], []
        for node in self._reporting.get(cache.storage_key, ()):
            record = self.nodes[node]
            if cache.storage_key in record.desired_keys():
                continue
            not_ready = record.not_ready_for(now, self.heartbeat_timeout)
            if not_ready is not None and not_ready > self.not_ready_deletion_timeout:
                given_up.append(record.name)
            else:
                waiting.append(record.name)
        return DeletionProgress(not waiting, tuple(sorted(waiting)), tuple(sorted(given_up)))

    def nodegroup_summary(self, name: str) -> JsonObject:
        members = self.members(name)
        group = self.groups.get(name)
        now, timeout = self._clock(), self.heartbeat_timeout
        nodes: list[JsonObject] = []
        disk_capacity = 0
        for r in members:  # one plain loop: a group may have thousands of nodes
            disk = None
            if r.report is not None:
                capacity = r.report.disk.capacity_bytes
                disk = {"capacityBytes": capacity, "freeBytes": r.report.disk.free_bytes}
                disk_capacity += capacity
            nodes.append(
                {"name": r.name, "ready": r.not_ready_for(now, timeout) is None, "disk": disk}
            )
        summary: JsonObject = {
            "nodeGroup": name,
            "exists": group is not None,
            "nodes": nodes,
            "diskCapacityBytes": disk_capacity,
        }
        if group is not None:
            summary["storageLimit"] = group.storage_limit_text
            summary.update(group_usage(group, self.placement))
        models: list[Mapping[str, Any]] = []
        for desired in self.placement.models_by_group.get(name, ()):
            states = dict(self.aggregate(desired.caches[0]).buckets.get(name, {}))
            models.append(
                {
                    "caches": list(desired.caches),
                    "storageKey": desired.storage_key,
                    "sourceModelUri": desired.source_model_uri,
                    "nodeStatus": states,
                }
            )
        summary["models"] = models
        return summary

    def placement_of(self, cache_name: str, group: str) -> list[str]:
        return self.aggregate(cache_name).downloaded_in(group)


__all__ = ["DeletionProgress", "Dirty", "Placement", "Registry"]
