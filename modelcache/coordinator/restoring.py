"""A node's last known state, read back from the LocalModelNode object a coordinator wrote.

The kube store keeps no agent records of its own: LocalModelNode objects are its record of each
node. A coordinator that starts (a new leader after a handover, or a restart) reads each node's
last report back from there, so the statuses it writes before the agents speak to it again say
what the last ones said, instead of every node turning NotReady or Pending for a heartbeat and
a deleted cache losing its finalizer while nodes still hold the files.

`modelDetails` carries what an agent reported per model (the wire fields, keyed by cache name),
`disk` its disk, `ready` whether it was heard from in time, `spec.localModels` its group. A model
the node held for no cache at all is not there; it only mattered for cleaning up, and the agent
reports it again within a heartbeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from modelcache.contract.agent_wire import (
    ModelReport,
    Registration,
    StatusReport,
    parse_disk,
    parse_model_report,
)
from modelcache.contract.objects import FieldError, JsonObject
from modelcache.coordinator.registry import Registry

log = logging.getLogger(__name__)


def restore_from_node_object(registry: Registry, obj: JsonObject) -> bool:
    """Bring back the node's last report from its LocalModelNode; False when it holds none (no
    agent ever reported there) or cannot be read (then the node waits for its agent)."""
    name = obj.get("metadata", {}).get("name")
    status = obj.get("status") or {}
    if not isinstance(name, str) or not isinstance(status, Mapping) or "disk" not in status:
        return False
    try:
        disk = parse_disk(status["disk"])
        models = _reported_models(status)
    except FieldError as e:
        log.warning("not restoring node %s from its LocalModelNode: %s", name, e)
        return False
    group = _group(obj.get("spec"))
    known = registry.nodes.get(name)
    if known is not None and known.in_cluster and known.cluster_group == group:
        group = None  # the Node's label says it: follow the label, as the agent does
    registration = Registration(node_group=group, address="", disk=disk)
    last_report_time = status.get("lastReportTime")
    registry.restore_node(
        name,
        registration,
        StatusReport(disk, models),
        ready=status.get("ready") is True,
        last_report_time=last_report_time if isinstance(last_report_time, str) else None,
    )
    return True


def _reported_models(status: Mapping[str, Any]) -> dict[str, ModelReport]:
    details = status.get("modelDetails") or {}
    if not isinstance(details, Mapping):
        raise FieldError("status.modelDetails", "must be an object")
    models: dict[str, ModelReport] = {}
    for cache_name, detail in details.items():
        # A model the node was told to hold but had not reported carries only its storage key.
        if isinstance(detail, Mapping) and "state" in detail:
            report = parse_model_report(detail, f"status.modelDetails.{cache_name}")
            models[report.storage_key] = report
    return models


def _group(spec: object) -> str | None:
    """The group the node's list was made for: every entry names the same one."""
    entries = spec.get("localModels") if isinstance(spec, Mapping) else None
    groups = {e.get("nodeGroup") for e in entries or () if isinstance(e, Mapping)}
    group = groups.pop() if len(groups) == 1 else None
    return group if isinstance(group, str) and group else None
