"""`GET /v1/nodegroups/{group}`: a node group's nodes, capacity, usage and models, as JSON.

A group may have thousands of nodes, and under load most of them reported since the last read:
the summary is joined from pieces kept rendered elsewhere (each node's entry until it reports
again, each model's per-node states in its cache's aggregate) rather than built as thousands of
small dicts and serialized again per request. It stays a few milliseconds at 2,500 nodes.
"""

from __future__ import annotations

import orjson

from modelcache.coordinator.registry import Registry
from modelcache.coordinator.statuses import group_usage


def group_summary_json(registry: Registry, name: str) -> bytes:
    timing = registry.timing()
    members = registry.members(name)
    nodes = b",".join(
        r.summary_json(r.not_ready_for(timing.now, timing.heartbeat_timeout) is None)
        for r in members
    )
    capacity = sum(r.report.disk.capacity_bytes for r in members if r.report is not None)
    group = registry.groups.get(name)
    tail: dict[str, object] = {"diskCapacityBytes": capacity}
    if group is not None:
        tail["storageLimit"] = group.storage_limit_text
        tail.update(group_usage(group, registry.placement))
    models = b",".join(
        orjson.dumps(
            {
                "caches": list(desired.caches),
                "storageKey": desired.storage_key,
                "sourceModelUri": desired.source_model_uri,
            }
        )[:-1]
        + b',"nodeStatus":'
        + registry.aggregate(desired.caches[0]).group_states_json(name)
        + b"}"
        for desired in registry.placement.models_by_group.get(name, ())
    )
    head = orjson.dumps({"nodeGroup": name, "exists": group is not None})[:-1]
    return b'%s,"nodes":[%s],%s,"models":[%s]}' % (head, nodes, orjson.dumps(tail)[1:-1], models)
