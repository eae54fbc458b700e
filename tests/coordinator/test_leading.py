"""Two coordinator replicas on `--store kube` elect one leader on a Lease in the fake API server
(real kubernetes_asyncio client): both are Ready (a PodDisruptionBudget may evict either), only
the leader's pod carries the label the Service selects, the standby serves nothing, a killed
leader is replaced within the lease duration, the new leader's statuses do not regress, a
graceful stop takes the label off and hands over at once, and a leader that cannot renew stops
before anyone may take over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import CACHE_FINALIZER
from modelcache.coordinator.leading import LEADER, LEADER_LABEL, LeadershipLostError, RoleLabel
from modelcache.coordinator.settings import ElectionSettings, StoreSettings, settings_from
from modelcache.coordinator.stores.base import ObjectNotFoundError, StoreUnavailableError
from tests.coordinator.conftest import cache, fast_settings, node_group, serving
from tests.coordinator.replicas import (
    FAST,
    LEASE,
    NAMESPACE,
    Start,
    add_pod,
    labelled,
    replicas,
)
from tests.coordinator.test_kube_store import CACHES, GROUPS, LLAMA, NODES, kube_node
from tests.fakekube.fixtures import FakeKubeHandle

MISTRAL = "hf://mistralai/mistral-7b-v0.3"
A100 = ("gpu-a100-0", "gpu-a100-1")


@pytest.fixture
async def start_replica(fake_kube: FakeKubeHandle, tmp_path: Path) -> AsyncIterator[Start]:
    async with replicas(fake_kube, tmp_path, heartbeat_timeout=30.0) as start:
        # heartbeat_timeout: the agents here are the test; they report when it says
        yield start


async def until(check: Callable[[], bool], what: str, within: float = 5.0) -> float:
    """Poll `check` until true; return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return loop.time() - started


def lease(fake_kube: FakeKubeHandle) -> dict[str, Any]:
    spec: dict[str, Any] = fake_kube.get("leases", LEASE, NAMESPACE)["spec"]
    return spec


def pod_writes(fake_kube: FakeKubeHandle, pod: str) -> list[int]:
    """Where in the request log the pod's label was written."""
    return [
        i
        for i, r in enumerate(fake_kube.requests)
        if r.method == "PATCH" and r.path.endswith(f"/pods/{pod}")
    ]


def seed_cluster(fake_kube: FakeKubeHandle) -> None:
    fake_kube.create(GROUPS, node_group("a100", "80Gi"))
    for node in A100:
        fake_kube.create("nodes", kube_node(node, "a100"))
    fake_kube.create(CACHES, cache("llama3", LLAMA, "16Gi", "a100"))
    fake_kube.create(CACHES, cache("mistral", MISTRAL, "15Gi", "a100"))


async def test_one_replica_leads_and_the_other_stands_by_ready_but_unlabelled(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    seed_cluster(fake_kube)
    a = await start_replica("coordinator-a")
    await until(lambda: a.leading, "the first replica leads")
    b = await start_replica("coordinator-b")
    await asyncio.sleep(FAST.lease_duration)  # longer than a lease: b must still stand by

    assert a.leading
    assert not b.leading
    # Both Ready: a drain may evict either (minAvailable 1). The Service selects the label.
    assert await a.readyz() == (200, {"status": "ready", "leader": "coordinator-a"})
    assert await b.readyz() == (200, {"status": "standby", "leader": "coordinator-a"})
    assert labelled(fake_kube) == ["coordinator-a"]
    assert fake_kube.get("pods", "coordinator-a", NAMESPACE)["metadata"]["labels"] == {
        "app.kubernetes.io/name": "modelcache-coordinator",
        LEADER_LABEL: LEADER,
    }
    held = lease(fake_kube)
    assert held["holderIdentity"] == "coordinator-a"
    assert held["leaseDurationSeconds"] == 2  # 1.5 s, rounded up: the field is whole seconds
    assert held["leaseTransitions"] == 0
    renewed = held["renewTime"]
    await asyncio.sleep(FAST.retry_period * 2)
    assert lease(fake_kube)["renewTime"] > renewed  # the leader renews every retry period

    # The standby serves nobody: agents and users are sent to the leader by the Service.
    async with b.api.http.get(f"{b.api.url}/v1/localmodelcaches") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        error = (await response.json())["error"]
    assert "coordinator-b" in error
    assert "coordinator-a holds it" in error
    await b.api.register("gpu-a100-0", None, expect=503)
    async with b.api.http.get(f"{b.api.url}/healthz") as response:
        assert response.status == 200  # alive, only not the leader
    assert b.api.coordinator.registry.caches == {}  # it loads nothing until it leads
    await a.api.register("gpu-a100-0", None)
    await until(lambda: fake_kube.exists(NODES, "gpu-a100-0"), "the leader writes")


async def test_a_killed_leader_is_replaced_within_the_lease_and_no_status_regresses(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    seed_cluster(fake_kube)
    a = await start_replica("coordinator-a")
    await until(lambda: a.leading, "the first replica leads")
    b = await start_replica("coordinator-b")
    for node in A100:
        await a.api.register(node, None)
    await a.api.report(A100[0], {LLAMA: "ModelDownloaded", MISTRAL: "ModelDownloaded"})
    await a.api.report(A100[1], {LLAMA: "ModelDownloading", MISTRAL: "ModelDownloaded"})
    # mistral is deleted: its finalizer stays while the nodes hold the files.
    await a.api.call("DELETE", "/v1/localmodelcaches/mistral", expect=202)

    def written() -> bool:
        llama = fake_kube.get(CACHES, "llama3").get("status") or {}
        mistral = fake_kube.get(CACHES, "mistral").get("status") or {}
        deleting = [c for c in mistral.get("conditions", []) if c["reason"] == "Deleting"]
        return llama.get("copies", {}).get("available") == 1 and bool(deleting)

    await until(written, "the leader wrote the statuses")
    await asyncio.sleep(0.2)  # let it write everything it has
    caches = {name: fake_kube.get(CACHES, name)["status"] for name in ("llama3", "mistral")}
    nodes = {node: fake_kube.get(NODES, node)["status"] for node in A100}
    groups = fake_kube.get(GROUPS, "a100")["status"]
    assert caches["llama3"]["nodeStatus"] == {
        A100[0]: "NodeDownloaded",
        A100[1]: "NodeDownloading",
    }
    assert nodes[A100[1]]["modelStatus"] == {
        "llama3": "ModelDownloading",
        "mistral": "ModelDownloaded",
    }

    await a.kill()
    took = await until(lambda: b.leading, "the standby takes over", within=5.0)
    # It waited for the silent lease to expire (2 s, from when it last saw it change, which is
    # up to a retry period before the kill), then took it at its next try.
    assert 1.5 < took < 2.0 + FAST.retry_period * 1.2 + 1.0
    assert lease(fake_kube)["holderIdentity"] == "coordinator-b"
    assert lease(fake_kube)["leaseTransitions"] == 1
    assert await b.readyz() == (200, {"status": "ready", "leader": "coordinator-b"})
    # The killed pod keeps its label but fails its readiness probe: the Service drops it.
    await until(lambda: labelled(fake_kube) == ["coordinator-a", "coordinator-b"], "b labels")

    # No agent has spoken to b yet: what it writes (and serves) is what a wrote.
    await asyncio.sleep(0.3)
    await b.api.settle()
    assert {name: fake_kube.get(CACHES, name)["status"] for name in caches} == caches
    assert {node: fake_kube.get(NODES, node)["status"] for node in A100} == nodes
    assert fake_kube.get(GROUPS, "a100")["status"] == groups
    assert CACHE_FINALIZER in fake_kube.get(CACHES, "mistral")["metadata"]["finalizers"]
    served = await b.api.call("GET", "/v1/localmodelcaches/llama3")
    assert served["status"]["nodeStatus"] == caches["llama3"]["nodeStatus"]

    # The agents' next reports (no new registration needed) move things on from there.
    await b.api.report(A100[0], {LLAMA: "ModelDownloaded"})
    await b.api.report(A100[1], {LLAMA: "ModelDownloaded"})
    await until(lambda: not fake_kube.exists(CACHES, "mistral"), "the new leader releases mistral")
    await until(
        lambda: fake_kube.get(CACHES, "llama3")["status"]["copies"]["available"] == 2,
        "the new leader writes the new state",
    )


async def test_a_graceful_stop_releases_the_lease_and_hands_over_at_once(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    seed_cluster(fake_kube)
    slow = replace(FAST, lease_duration=10.0, renew_deadline=6.0)  # expiry would take 10 s
    a = await start_replica("coordinator-a", slow)
    await until(lambda: a.leading, "the first replica leads")
    b = await start_replica("coordinator-b", slow)
    await a.api.register(A100[0], None)
    await a.api.report(A100[0], {LLAMA: "ModelDownloaded"})

    await until(lambda: labelled(fake_kube) == ["coordinator-a"], "a labels its pod")

    await a.stop()
    assert lease(fake_kube)["holderIdentity"] == ""  # released after the last status write
    assert "coordinator-a" not in labelled(fake_kube)  # taken off before the release
    assert fake_kube.get(CACHES, "llama3")["status"]["nodeStatus"][A100[0]] == "NodeDownloaded"
    took = await until(lambda: b.leading, "the standby takes over", within=2.0)
    assert took < FAST.retry_period * 1.2 + 0.5
    assert lease(fake_kube)["holderIdentity"] == "coordinator-b"
    await until(lambda: labelled(fake_kube) == ["coordinator-b"], "b labels its pod")
    # b cleared its own pod at start; then, only once a had taken its label off, marked it.
    assert max(pod_writes(fake_kube, "coordinator-a")) < max(pod_writes(fake_kube, "coordinator-b"))


async def test_a_restarted_ex_leader_clears_its_stale_label_before_standing_by(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    """A leader that exited restarts in the same pod: the label is still on it."""
    seed_cluster(fake_kube)
    await start_replica("coordinator-a")
    await until(lambda: labelled(fake_kube) == ["coordinator-a"], "a leads and labels its pod")
    add_pod(fake_kube, "coordinator-b", **{LEADER_LABEL: LEADER})  # b led before its restart
    b = await start_replica("coordinator-b")
    await until(lambda: labelled(fake_kube) == ["coordinator-a"], "b clears its label")
    await until(lambda: lease(fake_kube)["renewTime"] is not None, "the Lease is renewed")
    await asyncio.sleep(FAST.retry_period * 2)
    assert not b.leading
    assert await b.readyz() == (200, {"status": "standby", "leader": "coordinator-a"})


async def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_can_expire(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    seed_cluster(fake_kube)
    a = await start_replica("coordinator-a")
    await until(lambda: a.leading, "it leads")
    await until(lambda: labelled(fake_kube) == ["coordinator-a"], "it labels its pod")
    leading = a.api.coordinator.background[0]
    writes = len(fake_kube.writes())
    fake_kube.conflict_next("leases", LEASE, times=1000, namespace=NAMESPACE)  # renewals fail

    took = await until(lambda: leading.done(), "it steps down", within=3.0)
    # Within the renew deadline of its last renewal (at most a retry period before the first
    # refused one), so well before a standby, waiting 2 s from then, could take over.
    assert took < FAST.renew_deadline + 0.15
    with pytest.raises(LeadershipLostError, match="no renewal got through for 1s"):
        leading.result()
    assert a.api.coordinator.standby is not None
    status, body = await a.readyz()
    assert (status, body["status"]) == (503, "lost")  # about to exit: not Ready
    assert "no renewal got through" in body["error"]
    await a.api.register(A100[0], None, expect=503)
    with pytest.raises(LeadershipLostError):
        await a.api.coordinator.apply_cache("new", cache("new", LLAMA, "1Gi", "a100"))
    await a.stop()  # no last statuses, no release: the Lease is not its own to write
    others = [(w.method, w.path) for w in fake_kube.writes()[writes:] if "/leases/" not in w.path]
    # Only its label, taken off its pod: the Service stops sending anything here.
    assert others == [("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/coordinator-a")]
    assert labelled(fake_kube) == []
    assert lease(fake_kube)["holderIdentity"] == "coordinator-a"


async def test_a_leader_that_sees_another_holder_steps_down_at_once(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    seed_cluster(fake_kube)
    a = await start_replica("coordinator-a")
    await until(lambda: a.leading, "it leads")
    fake_kube.patch("leases", LEASE, {"spec": {"holderIdentity": "intruder"}}, NAMESPACE)
    took = await until(lambda: not a.leading, "it steps down", within=2.0)
    assert took < FAST.retry_period + 0.3
    with pytest.raises(LeadershipLostError, match="intruder holds it now"):
        await a.api.coordinator.background[0]
    status, body = await a.readyz()
    assert (status, body["status"], body["leader"]) == (503, "lost", "intruder")


async def test_a_restarted_single_coordinator_keeps_the_node_reports(
    fake_kube: FakeKubeHandle, tmp_path: Path
) -> None:
    """Without election too: the kube store reads reports back from the LocalModelNodes. A
    coordinator alone labels its pod too: the same Service selects it."""
    seed_cluster(fake_kube)
    add_pod(fake_kube, "coordinator-solo")
    settings = fast_settings(
        tmp_path / "unused.db",
        store=StoreSettings("kube", kubeconfig=fake_kube.kubeconfig),
        heartbeat_timeout=30.0,
        pod_name="coordinator-solo",
    )
    async with serving(settings) as api:
        assert labelled(fake_kube) == ["coordinator-solo"]  # before it serves anyone
        await api.register(A100[0], None)
        await api.report(A100[0], {LLAMA: "ModelDownloaded"})
        await api.settle()
        before = fake_kube.get(CACHES, "llama3")["status"]
    async with serving(settings) as api:
        await api.settle()
        assert fake_kube.get(CACHES, "llama3")["status"] == before
        record = api.coordinator.registry.nodes[A100[0]]
        assert record.registration is not None
        assert record.registration.node_group is None
        await api.report(A100[0], {LLAMA: "ModelDownloaded"})  # no new registration needed
    assert labelled(fake_kube) == []


async def test_outside_a_pod_nothing_is_labelled(
    fake_kube: FakeKubeHandle, start_replica: Start, caplog: pytest.LogCaptureFixture
) -> None:
    seed_cluster(fake_kube)
    with caplog.at_level(logging.WARNING, logger="modelcache.coordinator.leading"):
        a = await start_replica("coordinator-a", pod_name=None)
        await until(lambda: a.leading, "it leads")
        await a.stop()
    assert lease(fake_kube)["holderIdentity"] == ""
    assert [r for r in fake_kube.requests if "/pods/" in r.path] == []
    said = [r.getMessage() for r in caplog.records if "POD_NAME is not set" in r.getMessage()]
    assert len(said) == 1
    assert f"{LEADER_LABEL}={LEADER}" in said[0]


async def test_a_leader_whose_pod_cannot_be_labelled_still_leads_and_says_why(
    fake_kube: FakeKubeHandle, start_replica: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong POD_NAME (or missing RBAC) is not fixed by retrying, nor by stepping down."""
    seed_cluster(fake_kube)
    with caplog.at_level(logging.ERROR, logger="modelcache.coordinator.leading"):
        a = await start_replica("coordinator-a", pod_name="coordinator-gone")
        await until(lambda: a.leading, "it leads")
        # Two PATCHes fail: the stale-label clear before leading, then the label once loaded.
        await until(
            lambda: any(r.getMessage().startswith("labelling pod") for r in caplog.records),
            "it says why the label is missing",
        )
    assert "pod modelcache-system/coordinator-gone" in caplog.records[0].getMessage()
    assert "check POD_NAME and that the coordinator's Role may patch pods" in caplog.text
    assert labelled(fake_kube) == []
    await a.api.register(A100[0], None)  # it serves whoever reaches it
    assert a.leading
    requests = len(fake_kube.requests)
    await a.stop()  # no label to take off
    assert [r for r in fake_kube.requests[requests:] if "/pods/" in r.path] == []


class FlakyPods:
    """A store whose pod patches fail `failures` times first (API server unreachable)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.patched: list[dict[str, str | None]] = []

    async def patch_pod_labels(self, pod: str, labels: Mapping[str, str | None]) -> None:
        if pod != "c-0":
            raise ObjectNotFoundError(f"pods/{pod} not found")
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("API server unreachable", retry_after=0.05)
        self.patched.append(dict(labels))


async def test_the_label_is_retried_through_passing_faults() -> None:
    pods = FlakyPods(failures=2)
    role = RoleLabel(pods, "c-0", NAMESPACE, retry_period=0.01)
    await role.mark()
    assert pods.patched == [{LEADER_LABEL: LEADER}]
    assert role.marked
    pods.failures = 1
    await role.unmark()  # one try only: stopping must not wait
    assert role.marked
    await role.unmark()
    assert pods.patched[-1] == {LEADER_LABEL: None}
    assert not role.marked
    await role.unmark()  # nothing to take off
    assert len(pods.patched) == 2
    nowhere = RoleLabel(pods, None, NAMESPACE, retry_period=0.01)
    await nowhere.clear()
    await nowhere.mark()
    assert len(pods.patched) == 2


def test_leader_election_flags() -> None:
    kube, _ = settings_from(["--store", "kube"], {"POD_NAME": "coordinator-7d9f-abcde"})
    assert kube.election == ElectionSettings(identity="coordinator-7d9f-abcde")
    assert kube.pod_name == "coordinator-7d9f-abcde"  # the pod the leader labels
    assert (kube.election.lease_duration, kube.election.renew_deadline) == (15.0, 10.0)
    assert kube.election.retry_period == 2.0
    outside, _ = settings_from(["--store", "kube"], {})
    assert outside.election is not None
    assert "_" in outside.election.identity  # host_random
    assert outside.pod_name is None  # outside a pod: no label
    assert settings_from(["--store", "kube", "--no-leader-elect"], {})[0].election is None
    assert settings_from([], {})[0].election is None  # the embedded store runs alone
    scaled, _ = settings_from(
        ["--store", "kube", "--lease-name", "mc"],
        {"MODELCACHE_LEASE_DURATION": "6", "MODELCACHE_LEADER_ELECT": "true"},
    )
    assert scaled.election is not None
    assert scaled.election.lease_name == "mc"
    assert (scaled.election.renew_deadline, scaled.election.retry_period) == (4.0, 0.8)
    off, _ = settings_from(["--store", "kube"], {"MODELCACHE_LEADER_ELECT": "false"})
    assert off.election is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--leader-elect"], "--leader-elect needs --store kube"),
        (["--store", "kube", "--lease-duration", "5", "--lease-renew-deadline", "5"], "< --lease"),
        (["--store", "kube", "--lease-retry-period", "12"], "--lease-retry-period"),
        (["--store", "kube", "--lease-duration", "0"], "must be positive"),
    ],
)
def test_bad_leader_election_flags_say_what_to_change(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings_from(args, {})


async def test_the_standby_turns_away_a_service_request_quickly(
    fake_kube: FakeKubeHandle, start_replica: Start
) -> None:
    """A request that reaches a standby (probes lag) is answered at once, not held."""
    seed_cluster(fake_kube)
    a = await start_replica("coordinator-a")
    await until(lambda: a.leading, "it leads")
    b = await start_replica("coordinator-b")
    timeout = aiohttp.ClientTimeout(total=1)
    async with b.api.http.get(
        f"{b.api.url}/v1/agents/gpu-a100-0/desired?generation=0&wait=30", timeout=timeout
    ) as response:
        assert response.status == 503
