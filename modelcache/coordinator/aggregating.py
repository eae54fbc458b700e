"""Each cache's per-node view, kept up to date node by node.

With 10,000 nodes a cache's status has thousands of entries; recomputing them all for every
status write or REST read would spend the coordinator's one core walking nodes. Instead a report
(or a readiness change, or a node joining or leaving) updates just that node's entry in the caches
it concerns, and rendering a status only folds the per-node dicts together (C-speed dict and
Counter work). A change of placement rebuilds a cache's view from scratch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from modelcache.contract.agent_wire import NODE_STATE_OF_MODEL_STATE, NodeState
from modelcache.contract.objects import JsonObject, ModelCache
from modelcache.coordinator.nodes import NodeRecord

HOLDERS = ""  # bucket of nodes outside the admitted groups that still hold the files


def node_state(record: NodeRecord, storage_key: str, now: float, timeout: float) -> NodeState:
    if record.not_ready_for(now, timeout) is not None:
        return "NodeNotReady"
    report = record.model(storage_key)
    return NODE_STATE_OF_MODEL_STATE[report.state] if report else "NodeDownloadPending"


class CacheAggregate:
    """Per-node state of one cache, bucketed by admitted node group (HOLDERS for the rest)."""

    def __init__(self, cache: ModelCache, admitted: Iterable[str]) -> None:
        self.storage_key = cache.storage_key
        self.admitted = frozenset(admitted)
        self.buckets: dict[str, dict[str, NodeState]] = {g: {} for g in self.admitted}
        self.buckets[HOLDERS] = {}
        self._where: dict[str, str] = {}
        self.progress: dict[str, JsonObject] = {}
        self.started: dict[str, str] = {}
        self.finished: dict[str, str | None] = {}  # admitted nodes only

    def update(self, name: str, record: NodeRecord | None, now: float, timeout: float) -> None:
        """Recompute one node's entry; `record` None means the node is gone."""
        old = self._where.pop(name, None)
        if old is not None:
            del self.buckets[old][name]
            self.progress.pop(name, None)
            self.started.pop(name, None)
            self.finished.pop(name, None)
        if record is None:
            return
        key = self.storage_key
        group = record.group
        if group is not None and group in self.admitted:
            bucket = group
        elif record.holds(key):
            bucket = HOLDERS
        else:
            return
        self.buckets[bucket][name] = node_state(record, key, now, timeout)
        self._where[name] = bucket
        report = record.model(key)
        if report is not None:
            self.progress[name] = {"bytesDone": report.bytes_done, "bytesTotal": report.bytes_total}
            if report.started_at:
                self.started[name] = report.started_at
        if bucket != HOLDERS:
            self.finished[name] = report.finished_at if report is not None else None

    def node_status(self) -> dict[str, NodeState]:
        merged: dict[str, NodeState] = {}
        for group in sorted(self.admitted):
            merged.update(self.buckets[group])
        merged.update(self.buckets[HOLDERS])
        return merged

    def counts(self, group: str) -> dict[str, int]:
        states = Counter(self.buckets.get(group, {}).values())
        return {
            "nodes": sum(states.values()),
            "available": states["NodeDownloaded"],
            "failed": states["NodeDownloadError"],
            "downloading": states["NodeDownloading"],
            "notReady": states["NodeNotReady"],
        }

    def downloaded_in(self, group: str) -> list[str]:
        return sorted(n for n, s in self.buckets.get(group, {}).items() if s == "NodeDownloaded")
