"""Per-model node labels: ``localmodel.modelcache.io/<storage-key>=downloaded`` on every Node that
holds the model ModelDownloaded and is still meant to hold it, on no other.

The mutating webhook pins an InferenceService's pods to this label (`binding.py`), so a pod can
only land where its model already is. The label goes as soon as the model leaves the node's
desired list (its cache deleted, the node moved to another group), before the files do: a model
on its way out attracts no new pods. Only the kube store labels nodes (`NodeLabeller`); the
labels a Node carries come back through the store's Node watch (`NodeRecord.model_labels`), so a
label someone removes by hand is put back, and a stale one left by an earlier coordinator goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from modelcache.contract.errors import ModelCacheError
from modelcache.coordinator.binding import DOWNLOADED, MODEL_LABEL_PREFIX, model_node_label
from modelcache.coordinator.nodes import NodeRecord
from modelcache.coordinator.registry import Registry

log = logging.getLogger(__name__)
_PATCH_CONCURRENCY = 16


@runtime_checkable
class NodeLabeller(Protocol):
    """A store that can set labels on cluster Nodes."""

    async def patch_node_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        """Merge `labels` into the Node's labels; None removes one. A Node that is gone is no
        error. Raises `ModelCacheError` when the API server refuses or cannot be reached."""


def model_label_keys(labels: Mapping[str, str]) -> frozenset[str]:
    """The storage keys of the per-model labels among a Node's labels (`<prefix><key>:
    downloaded`; another value is not ours, and is overwritten only when the model is there)."""
    return frozenset(
        key.removeprefix(MODEL_LABEL_PREFIX)
        for key, value in labels.items()
        if key.startswith(MODEL_LABEL_PREFIX) and value == DOWNLOADED
    )


def label_patch(wanted: frozenset[str], present: frozenset[str]) -> dict[str, str | None]:
    """The label changes (a merge patch of `metadata.labels`) turning the per-model labels
    `present` into `wanted` (storage keys both)."""
    patch: dict[str, str | None] = {model_node_label(k): None for k in sorted(present - wanted)}
    patch.update({model_node_label(k): DOWNLOADED for k in sorted(wanted - present)})
    return patch


class NodeLabelReconciler:
    """Brings every cluster node's per-model labels in line with what it holds.

    Each tick looks at a node only when its report, its desired list or its labels changed since
    the last look (object identity, so 10,000 quiet nodes cost microseconds). A failed patch is
    tried again on the next tick.
    """

    def __init__(self, registry: Registry, labeller: NodeLabeller, interval: float) -> None:
        self.registry = registry
        self.labeller = labeller
        self.interval = interval
        self._looked: dict[str, tuple[object, int, frozenset[str]]] = {}
        self._limit = asyncio.Semaphore(_PATCH_CONCURRENCY)

    async def run_forever(self, active: asyncio.Event) -> None:
        """Tick while `active` is set (the coordinator is ready: loaded, and the leader)."""
        while True:
            await active.wait()
            await self.reconcile_once()
            await asyncio.sleep(self.interval)

    def _changes(self) -> dict[str, tuple[NodeRecord, dict[str, str | None]]]:
        changes: dict[str, tuple[NodeRecord, dict[str, str | None]]] = {}
        for name in self._looked.keys() - self.registry.nodes.keys():
            del self._looked[name]
        for name, record in self.registry.nodes.items():
            if not record.in_cluster:
                continue
            seen = (record.report, record.generation, record.model_labels)
            last = self._looked.get(name)
            if last is not None and last[0] is seen[0] and last[1:] == seen[1:]:
                continue
            patch = label_patch(record.downloaded_keys(), record.model_labels)
            if patch:
                changes[name] = (record, patch)
            else:
                self._looked[name] = seen
        return changes

    async def reconcile_once(self) -> None:
        changes = self._changes()
        if changes:
            await asyncio.gather(*(self._patch(n, r, p) for n, (r, p) in changes.items()))

    async def _patch(self, name: str, record: NodeRecord, patch: dict[str, str | None]) -> None:
        async with self._limit:
            try:
                await self.labeller.patch_node_labels(name, patch)
            except ModelCacheError as e:
                log.warning("could not label node %s (%s); trying again", name, e)
                return
        # The Node watch confirms it shortly; meanwhile do not patch the same again.
        present = set(record.model_labels)
        for label, value in patch.items():
            key = label.removeprefix(MODEL_LABEL_PREFIX)
            (present.add if value is not None else present.discard)(key)
        record.model_labels = frozenset(present)
        added = sorted(k for k, v in patch.items() if v is not None)
        removed = sorted(k for k, v in patch.items() if v is None)
        log.info("node %s labels: added %s, removed %s", name, added or "-", removed or "-")


__all__ = ["NodeLabelReconciler", "NodeLabeller", "label_patch", "model_label_keys"]
