"""Agent reports turned into KServe's status fields, plus ours beside them (pure functions).

KServe's fields keep their exact names and values (`nodeStatus`, `copies`, `modelStatus`, ...);
our additions (per-group counts, conditions, bytes, timestamps) sit next to them, so KServe's own
tooling reads our objects unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modelcache.contract.agent_wire import model_report_to_raw
from modelcache.contract.objects import (
    API_VERSION,
    NODE_KIND,
    JsonObject,
    ModelCache,
    NodeGroup,
    format_time,
    now_rfc3339,
)
from modelcache.coordinator.aggregating import CacheAggregate
from modelcache.coordinator.nodes import NodeRecord
from modelcache.coordinator.placement import Placement, byte_quantity

ConditionSpec = tuple[str, str, str, str]  # type, status, reason, message


class ConditionBook:
    """Remembers when each condition last changed, so `lastTransitionTime` means what it says."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}  # (object, type) -> (status, time)

    def render(self, owner: str, specs: Iterable[ConditionSpec]) -> list[JsonObject]:
        rendered = []
        for kind, status, reason, message in specs:
            previous = self._seen.get((owner, kind))
            since = previous[1] if previous and previous[0] == status else now_rfc3339()
            self._seen[(owner, kind)] = (status, since)
            rendered.append(
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": since,
                }
            )
        return rendered

    def remember(self, owner: str, conditions: object) -> None:
        """Take transition times from a status written before (by us before a restart, or by
        the leader before us), for conditions we have no opinion on yet."""
        if not isinstance(conditions, list):
            return
        for condition in conditions:
            if not isinstance(condition, dict):
                continue
            kind, status, since = (
                condition.get(k) for k in ("type", "status", "lastTransitionTime")
            )
            if isinstance(kind, str) and isinstance(status, str) and isinstance(since, str):
                self._seen.setdefault((owner, kind), (status, since))

    def forget(self, owner: str) -> None:
        for key in [k for k in self._seen if k[0] == owner]:
            del self._seen[key]


@dataclass(frozen=True, slots=True)
class Timing:
    now: float
    heartbeat_timeout: float


def cache_status(
    cache: ModelCache,
    placement: Placement,
    aggregate: CacheAggregate,
    book: ConditionBook,
    inference_services: list[Any],
    deleting_message: str = "the cache is being deleted",
) -> JsonObject:
    """Status of one cache from its per-node aggregate. Nodes outside its admitted groups that
    still hold the files (a deleted cache, a removed group) stay listed until the files are gone."""
    status = _cache_status_fields(
        cache, placement, aggregate, book, inference_services, deleting_message
    )
    status["nodeStatus"] = aggregate.node_status()
    status["nodeProgress"] = dict(aggregate.progress)
    return status


def cache_status_json(
    cache: ModelCache,
    placement: Placement,
    aggregate: CacheAggregate,
    book: ConditionBook,
    inference_services: list[Any],
    deleting_message: str = "the cache is being deleted",
) -> bytes:
    """`cache_status` as JSON, the per-node maps joined from the aggregate's rendered entries:
    at 10,000 nodes a few hundred microseconds instead of milliseconds."""
    status = _cache_status_fields(
        cache, placement, aggregate, book, inference_services, deleting_message
    )
    big = {"nodeStatus": aggregate.node_status_json, "nodeProgress": aggregate.progress_json}
    members = [
        orjson.dumps(key) + b":" + (big[key]() if key in big else orjson.dumps(value))
        for key, value in status.items()
    ]
    return b"{" + b",".join(members) + b"}"


def _cache_status_fields(
    cache: ModelCache,
    placement: Placement,
    aggregate: CacheAggregate,
    book: ConditionBook,
    inference_services: list[Any],
    deleting_message: str,
) -> JsonObject:
    """The status, with None in place of the per-node maps (`nodeStatus`, `nodeProgress`)."""
    per_group: dict[str, JsonObject] = {}
    for admission in placement.admissions.get(cache.name, ()):
        if admission.admitted:
            per_group[admission.group] = {"admitted": True, **aggregate.counts(admission.group)}
        else:
            per_group[admission.group] = {"admitted": False, "reason": admission.reason}
    total = sum(g.get("nodes", 0) for g in per_group.values())
    available = sum(g.get("available", 0) for g in per_group.values())
    failed = sum(g.get("failed", 0) for g in per_group.values())
    status: JsonObject = {
        "nodeStatus": None,
        "copies": {"total": total, "available": available, "failed": failed},
        "inferenceServices": inference_services,
        "nodeGroupStatus": per_group,
        "nodeProgress": None,
        "conditions": book.render(
            cache.name, _cache_conditions(cache, placement, total, available, deleting_message)
        ),
    }
    if aggregate.started:
        status["firstStartedAt"] = min(aggregate.started.values())
    finished = aggregate.finished.values()
    if total and available == total and len(aggregate.finished) == total and all(finished):
        status["finishedAt"] = max(f for f in finished if f)
    return status


def _cache_conditions(
    cache: ModelCache, placement: Placement, total: int, available: int, deleting_message: str
) -> list[ConditionSpec]:
    admissions = placement.admissions.get(cache.name, ())
    conditions: list[ConditionSpec] = []
    if cache.deleting:
        conditions.append(("Ready", "False", "Deleting", deleting_message))
    elif not any(a.admitted for a in admissions):
        conditions.append(("Ready", "False", "NotAdmitted", "no node group admits this cache"))
    elif total == 0:
        conditions.append(("Ready", "False", "NoNodes", "no node is in an admitted node group yet"))
    elif available < total:
        message = f"{available} of {total} copies downloaded"
        conditions.append(("Ready", "False", "Downloading", message))
    else:
        conditions.append(("Ready", "True", "Downloaded", f"all {total} copies downloaded"))
    for a in admissions:
        status = "True" if a.admitted else "False"
        conditions.append((f"Admitted-{a.group}", status, a.reason, a.message))
    return conditions


def group_status(
    group: NodeGroup, placement: Placement, members: Iterable[NodeRecord]
) -> JsonObject:
    models = placement.models_by_group.get(group.name, ())
    return {
        **group_usage(group, placement),
        "nodes": sorted(r.name for r in members),
        "models": sorted(name for m in models for name in m.caches),
    }


def group_usage(group: NodeGroup, placement: Placement) -> JsonObject:
    used = placement.used_by_group.get(group.name, 0)
    return {
        "used": byte_quantity(used),
        "available": byte_quantity(max(group.storage_limit - used, 0)),
    }


def local_model_node(
    record: NodeRecord, timing: Timing, wanted_by: Mapping[str, str]
) -> JsonObject:
    """The LocalModelNode object for one node. `wanted_by` maps storage key -> cache name for keys
    whose cache no longer exists, so their status can still be named while they are deleted."""
    local_models: list[JsonObject] = []
    model_status: dict[str, str] = {}
    model_details: dict[str, JsonObject] = {}
    for desired in record.desired:
        for cache_name in desired.caches:
            local_models.append(
                {
                    "modelName": cache_name,
                    "sourceModelUri": desired.source_model_uri,
                    "nodeGroup": desired.node_group,
                }
            )
            report = record.model(desired.storage_key)
            model_status[cache_name] = report.state if report else "ModelDownloadPending"
            model_details[cache_name] = _model_detail(record, desired.storage_key)
    for key in record.report.models if record.report else ():
        name = wanted_by.get(key)
        if name is not None and name not in model_status:
            model_status[name] = record.report.models[key].state if record.report else ""
            model_details[name] = _model_detail(record, key)
    status: JsonObject = {"modelStatus": model_status, "modelDetails": model_details}
    if record.last_report_time:
        status["lastReportTime"] = record.last_report_time
    status["ready"] = record.not_ready_for(timing.now, timing.heartbeat_timeout) is None
    if record.report is not None:
        status["disk"] = {
            "capacityBytes": record.report.disk.capacity_bytes,
            "freeBytes": record.report.disk.free_bytes,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": NODE_KIND,
        "metadata": {"name": record.name},
        "spec": {"localModels": local_models},
        "status": status,
    }


def _model_detail(record: NodeRecord, storage_key: str) -> JsonObject:
    detail: JsonObject = {"storageKey": storage_key}
    report = record.model(storage_key)
    if report is not None:
        raw = dict(model_report_to_raw(report))
        del raw["storageKey"]
        detail.update(raw)
        if report.bytes_total:
            detail["progress"] = round(report.bytes_done / report.bytes_total, 4)
    return detail


__all__ = [
    "ConditionBook",
    "Timing",
    "cache_status",
    "cache_status_json",
    "format_time",
    "group_status",
    "group_usage",
]
