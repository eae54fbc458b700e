"""What the coordinator knows about one node: cluster membership, its agent, its latest report."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from modelcache.contract.agent_wire import (
    ModelReport,
    Registration,
    StatusReport,
    model_report_to_raw,
)
from modelcache.contract.errors import UsageError
from modelcache.contract.objects import JsonObject
from modelcache.contract.quantities import parse_quantity
from modelcache.coordinator.placement import DesiredModel

# A node serves its peers the chunks it holds while it pulls, and the whole model once done.
SERVING_STATES: Final = frozenset({"ModelDownloading", "ModelDownloaded"})


def serves(model: ModelReport | None) -> bool:
    """Whether a node reporting `model` so may serve it to its peers."""
    return model is not None and model.state in SERVING_STATES


@dataclass(slots=True)
class NodeRecord:
    name: str
    # From the cluster (kube store): the node-group label and the Ready condition.
    in_cluster: bool = False
    cluster_group: str | None = None
    cluster_ready: bool = True
    cluster_not_ready_since: float | None = None
    allocatable_gpus: int | None = None  # the Node's status.allocatable GPUs; None: unknown
    model_labels: frozenset[str] = frozenset()  # storage keys of the per-model labels it carries
    # From the agent.
    registration: Registration | None = None
    report: StatusReport | None = None
    applied_generation: int = 0  # the desired generation the agent says it has acted on
    last_seen: float | None = None  # monotonic time of the last register or report
    last_report_time: str | None = None  # wall clock, for status
    # What it must hold; `generation` bumps on every change so long polls return.
    desired: tuple[DesiredModel, ...] = ()
    generation: int = 0
    _changed: asyncio.Event | None = field(default=None, repr=False)
    restored: bool = False
    """Brought back from the store's record (address unknown) and not registered with this
    coordinator since: its agent is asked to register again, which tells us its address."""

    @property
    def group(self) -> str | None:
        """The agent's explicit group wins (standalone, or `--node-group`), else the node label."""
        if self.registration is not None and self.registration.node_group:
            return self.registration.node_group
        return self.cluster_group

    def set_desired(self, desired: tuple[DesiredModel, ...]) -> bool:
        if desired == self.desired:
            return False
        self.desired = desired
        self.bump()
        return True

    @property
    def changed(self) -> asyncio.Event:
        """Set when the generation after this one comes: what a long poll waits on."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def bump(self) -> None:
        """What the node is sent changed (its models, or its peers for one): a new generation,
        and the long poll waiting for it answers. A source joining a big group bumps thousands
        of nodes, most not polling right then: their event is made only when one waits."""
        self.generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @property
    def peer_url(self) -> str:
        """The agent's base URL for its peers; empty when it gave none an agent could use."""
        url = self.registration.address.rstrip("/") if self.registration is not None else ""
        scheme, _, rest = url.partition("://")
        return url if scheme in ("http", "https") and rest else ""

    def serving_keys(self) -> frozenset[str]:
        """Models its peers may fetch from it: those it is told to hold (it pulls them now, or
        holds them) and those it still reports pulling or holding. Listing a node before its
        first report lets nodes given a model together know each other from their first list
        and agree on who fetches what from the origin (a peer that has not started yet answers
        404 and is waited for a moment); and a node's list then changes with the group's
        membership only, not with every start and finish of a pull."""
        reported = (
            (key for key, model in self.report.models.items() if serves(model))
            if self.report is not None
            else ()
        )
        return self.desired_keys() | frozenset(reported)

    def not_ready_for(self, now: float, heartbeat_timeout: float) -> float | None:
        """Seconds this node has been NotReady, or None while it is ready."""
        if self.in_cluster and not self.cluster_ready:
            return now - (self.cluster_not_ready_since or now)
        if self.last_seen is None:
            return float("inf")  # no agent ever registered: it cannot download anything
        stale_for = now - self.last_seen - heartbeat_timeout
        return stale_for if stale_for > 0 else None

    def model(self, storage_key: str) -> ModelReport | None:
        return self.report.models.get(storage_key) if self.report is not None else None

    def desired_keys(self) -> frozenset[str]:
        return frozenset(m.storage_key for m in self.desired)

    def holds(self, storage_key: str) -> bool:
        return self.report is not None and storage_key in self.report.models

    def downloaded_keys(self) -> frozenset[str]:
        """Models the node holds ModelDownloaded that it is still meant to hold: what its
        per-model labels should say (a model on its way out no longer attracts pods)."""
        if self.report is None:
            return frozenset()
        desired = self.desired_keys()
        return frozenset(
            key
            for key, model in self.report.models.items()
            if model.state == "ModelDownloaded" and key in desired
        )

    def as_raw(self) -> JsonObject:
        """What a store keeps so a restarted coordinator still knows the node and its files."""
        body: JsonObject = {"metadata": {"name": self.name}}
        registration = self.registration
        if registration is not None:
            body["registration"] = {
                "nodeGroup": registration.node_group,
                "address": registration.address,
                "disk": {
                    "capacityBytes": registration.disk.capacity_bytes,
                    "freeBytes": registration.disk.free_bytes,
                },
            }
        if self.report is not None:
            disk = self.report.disk
            body["report"] = {
                "disk": {"capacityBytes": disk.capacity_bytes, "freeBytes": disk.free_bytes},
                "models": [model_report_to_raw(m) for m in self.report.models.values()],
            }
            body["appliedGeneration"] = self.applied_generation
        return body


def allocatable_count(node: Mapping[str, Any], resource: str) -> int | None:
    """A whole count from a Node's `status.allocatable` (a quantity string such as "8"), or None
    when the node does not say or says something that is not a whole count."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    value = allocatable.get(resource) if isinstance(allocatable, Mapping) else None
    if value is None:
        return None
    try:
        amount = parse_quantity(str(value))
    except UsageError:
        return None
    if amount < 0 or amount != amount.to_integral_value():
        return None
    return int(amount)
