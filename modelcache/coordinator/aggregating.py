"""Each cache's per-node view, kept up to date node by node.

With 10,000 nodes a cache's status has thousands of entries; recomputing them all for every
status write or REST read would spend the coordinator's one core walking nodes. Instead a report
(or a readiness change, or a node joining or leaving) updates just that node's entry in the caches
it concerns. Each entry is kept as the JSON it renders to, too (`"node":"NodeDownloading"`), and
the counts per state are kept as they change, so rendering a status is joining bytes: no walk over
thousands of nodes, no serializing of thousands of small dicts per rendering. A change of placement
rebuilds a cache's view from scratch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain

import orjson

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
        # The same entries as JSON members, in the same order, and the states counted per bucket.
        self._states_json: dict[str, dict[str, bytes]] = {b: {} for b in self.buckets}
        self._progress_json: dict[str, bytes] = {}
        self._counts: dict[str, Counter[NodeState]] = {b: Counter() for b in self.buckets}
        self._keys: dict[str, bytes] = {}  # node -> '"node":'

    def update(self, name: str, record: NodeRecord | None, now: float, timeout: float) -> None:
        """Recompute one node's entry; `record` None means the node is gone."""
        old = self._where.pop(name, None)
        if old is not None:
            self._counts[old][self.buckets[old].pop(name)] -= 1
            del self._states_json[old][name]
            self.progress.pop(name, None)
            self._progress_json.pop(name, None)
            self.started.pop(name, None)
            self.finished.pop(name, None)
        if record is None:
            self._keys.pop(name, None)
            return
        key = self.storage_key
        group = record.group
        if group is not None and group in self.admitted:
            bucket = group
        elif record.holds(key):
            bucket = HOLDERS
        else:
            return
        state = node_state(record, key, now, timeout)
        self.buckets[bucket][name] = state
        self._counts[bucket][state] += 1
        json_key = self._keys.get(name)
        if json_key is None:
            json_key = self._keys[name] = orjson.dumps(name) + b":"
        self._states_json[bucket][name] = b'%s"%s"' % (json_key, state.encode())
        self._where[name] = bucket
        report = record.model(key)
        if report is not None:
            done, total = report.bytes_done, report.bytes_total
            self.progress[name] = {"bytesDone": done, "bytesTotal": total}
            self._progress_json[name] = b'%s{"bytesDone":%d,"bytesTotal":%d}' % (
                json_key,
                done,
                total,
            )
            if report.started_at:
                self.started[name] = report.started_at
        if bucket != HOLDERS:
            self.finished[name] = report.finished_at if report is not None else None

    def _in_order(self) -> Iterator[str]:
        """The buckets in the order nodeStatus lists them: admitted groups by name, then holders."""
        return chain(sorted(self.admitted), (HOLDERS,))

    def node_status(self) -> dict[str, NodeState]:
        merged: dict[str, NodeState] = {}
        for bucket in self._in_order():
            merged.update(self.buckets[bucket])
        return merged

    def node_status_json(self) -> bytes:
        """`node_status()` as JSON."""
        members = chain.from_iterable(self._states_json[b].values() for b in self._in_order())
        return b"{" + b",".join(members) + b"}"

    def progress_json(self) -> bytes:
        """`progress` as JSON."""
        return b"{" + b",".join(self._progress_json.values()) + b"}"

    def counts(self, group: str) -> dict[str, int]:
        states = self._counts.get(group, Counter())
        return {
            "nodes": len(self.buckets.get(group, ())),
            "available": states["NodeDownloaded"],
            "failed": states["NodeDownloadError"],
            "downloading": states["NodeDownloading"],
            "notReady": states["NodeNotReady"],
        }

    def downloaded_in(self, group: str) -> list[str]:
        return sorted(n for n, s in self.buckets.get(group, {}).items() if s == "NodeDownloaded")
