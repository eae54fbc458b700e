"""Per-model node labels from what nodes hold, the InferenceService index, and Node GPU counts."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from modelcache.contract.agent_wire import Disk, ModelReport, Registration, StatusReport
from modelcache.contract.errors import TemporaryError
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.binding import LOCAL_MODEL_LABEL, model_node_label
from modelcache.coordinator.inference_services import InferenceServiceIndex
from modelcache.coordinator.node_labelling import (
    NodeLabelReconciler,
    label_patch,
    model_label_keys,
)
from modelcache.coordinator.nodes import allocatable_count
from modelcache.coordinator.registry import Registry
from tests.coordinator.conftest import cache, node_group

URI = "hf://acme/tiny-model"
KEY = storage_key(URI)
LABEL = model_node_label(KEY)


class Labeller:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, str | None]]] = []
        self.fail = False

    async def patch_node_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        if self.fail:
            raise TemporaryError("API server unreachable")
        self.patches.append((node, dict(labels)))


def report(state: str) -> StatusReport:
    model = ModelReport(KEY, state, 10, 10, 0.0, "", "", None, None)  # type: ignore[arg-type]
    return StatusReport(Disk(100, 50), {KEY: model})


def registry_with_node(group: str = "a100") -> Registry:
    registry = Registry(heartbeat_timeout=30, not_ready_deletion_timeout=600)
    registry.upsert_group(node_group("a100", "10Gi"))
    registry.upsert_cache(cache("tiny", URI, "1Gi", "a100"))
    registry.upsert_cluster_node("n1", group, True)
    registry.register("n1", Registration(None, "http://n1:9090", Disk(100, 50)))
    return registry


def test_label_patch_adds_and_removes_only_what_differs() -> None:
    assert label_patch(frozenset({"a", "b"}), frozenset({"b", "c"})) == {
        model_node_label("c"): None,
        model_node_label("a"): "downloaded",
    }
    assert label_patch(frozenset({"a"}), frozenset({"a"})) == {}
    labels = {LABEL: "downloaded", model_node_label("x"): "other", "team": "ml"}
    assert model_label_keys(labels) == {KEY}


@pytest.mark.parametrize(
    ("allocatable", "expected"),
    [
        ({"nvidia.com/gpu": "8"}, 8),
        ({"nvidia.com/gpu": "1k"}, 1000),
        ({}, None),
        (None, None),
        ({"nvidia.com/gpu": "0.5"}, None),
        ({"nvidia.com/gpu": "lots"}, None),
    ],
)
def test_allocatable_gpus_from_a_node(allocatable: object, expected: int | None) -> None:
    node = {"status": {"allocatable": allocatable}}
    assert allocatable_count(node, "nvidia.com/gpu") == expected


async def test_a_node_is_labelled_once_downloaded_and_unlabelled_when_the_cache_goes() -> None:
    registry, labeller = registry_with_node(), Labeller()
    labels = NodeLabelReconciler(registry, labeller, interval=0.01)
    registry.report("n1", report("ModelDownloading"), 1)
    await labels.reconcile_once()
    assert labeller.patches == []

    registry.report("n1", report("ModelDownloaded"), 1)
    labeller.fail = True  # a failed patch is tried again on the next tick
    await labels.reconcile_once()
    labeller.fail = False
    await labels.reconcile_once()
    assert labeller.patches == [("n1", {LABEL: "downloaded"})]
    await labels.reconcile_once()  # nothing changed: no second patch, not even a look
    assert len(labeller.patches) == 1

    # Someone removes it by hand (the Node watch reports it): it is put back.
    registry.upsert_cluster_node("n1", "a100", True, model_labels=frozenset())
    await labels.reconcile_once()
    assert labeller.patches[-1] == ("n1", {LABEL: "downloaded"})

    registry.remove_cache("tiny")  # files still there, but no longer wanted
    await labels.reconcile_once()
    assert labeller.patches[-1] == ("n1", {LABEL: None})
    assert len(labeller.patches) == 3


async def test_nodes_outside_the_cluster_are_never_labelled() -> None:
    registry, labeller = Registry(heartbeat_timeout=30, not_ready_deletion_timeout=600), Labeller()
    registry.upsert_group(node_group("a100", "10Gi"))
    registry.upsert_cache(cache("tiny", URI, "1Gi", "a100"))
    registry.register("standalone", Registration("a100", "http://s:9090", Disk(100, 50)))
    registry.report("standalone", report("ModelDownloaded"), 1)
    await NodeLabelReconciler(registry, labeller, interval=0.01).reconcile_once()
    assert labeller.patches == []


def test_the_index_follows_binding_labels_through_events() -> None:
    index = InferenceServiceIndex()

    def isvc(name: str, cache: str | None) -> dict[str, object]:
        labels = {LOCAL_MODEL_LABEL: cache} if cache else {}
        return {"metadata": {"name": name, "namespace": "team-a", "labels": labels}}

    index.observe("ADDED", isvc("chat", "tiny"))
    index.observe("ADDED", isvc("chat2", "tiny"))
    assert index.using("tiny") == [("team-a", "chat"), ("team-a", "chat2")]
    index.observe("MODIFIED", isvc("chat", "other"))
    index.observe("MODIFIED", isvc("chat2", None))  # opted out
    assert index.using("tiny") == []
    assert index.using("other") == [("team-a", "chat")]
    index.observe("DELETED", isvc("chat", "other"))
    assert index.using("other") == []
