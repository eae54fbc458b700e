"""Coordinator replicas with leader election on the fake API server, each reaching it over a
network path a test can cut (a kill: nothing it sends arrives any more), each in a pod of its
own there (POD_NAME), which the leader labels for the Service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelcache.coordinator.leading import LEADER, LEADER_LABEL
from modelcache.coordinator.settings import ElectionSettings, StoreSettings
from tests.coordinator.conftest import Api, fast_settings, serving
from tests.coordinator.tcp_proxy import TcpProxy, proxy_to
from tests.fakekube.fixtures import FakeKubeHandle, write_kubeconfig

NAMESPACE = "modelcache-system"
LEASE = "modelcache-coordinator"
FAST = ElectionSettings(identity="", lease_duration=1.5, renew_deadline=1.0, retry_period=0.2)
"""Written to the Lease as 2 s (whole seconds)."""
APP = {"app.kubernetes.io/name": "modelcache-coordinator"}
"""The Deployment's pod template labels; the Service selects these plus the leader label."""
SERVICE_SELECTOR = ",".join(f"{k}={v}" for k, v in {**APP, LEADER_LABEL: LEADER}.items())


def labelled(fake_kube: FakeKubeHandle) -> list[str]:
    """The pods the coordinator Service selects (daemonset/coordinator/service.yaml)."""
    pods = fake_kube.list("pods", NAMESPACE, label_selector=SERVICE_SELECTOR)
    return sorted(p["metadata"]["name"] for p in pods)


def add_pod(fake_kube: FakeKubeHandle, name: str, **labels: str) -> None:
    """The replica's pod as the Deployment makes it (`labels` on top: a stale leader label)."""
    metadata = {"name": name, "namespace": NAMESPACE, "labels": {**APP, **labels}}
    fake_kube.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": metadata})


@dataclass
class Replica:
    """One coordinator process."""

    name: str
    api: Api
    path: TcpProxy
    stack: contextlib.AsyncExitStack

    @property
    def leading(self) -> bool:
        return self.api.coordinator.standby is None

    async def kill(self) -> None:
        """As SIGKILL: nothing more reaches the API server (no last statuses, no release)."""
        self.path.sever()
        await self.stack.aclose()

    async def stop(self) -> None:
        """As SIGTERM: last statuses, then the Lease released."""
        await self.stack.aclose()

    async def readyz(self) -> tuple[int, Any]:
        async with self.api.http.get(f"{self.api.url}/readyz") as response:
            return response.status, await response.json()


Start = Callable[..., Awaitable[Replica]]


@contextlib.asynccontextmanager
async def replicas(
    fake_kube: FakeKubeHandle, tmp_path: Path, **overrides: Any
) -> AsyncIterator[Start]:
    """`start(name, election=FAST, **more_overrides)` starts a replica whose holderIdentity and
    pod are `name` (the pod is made unless it exists: a restart); every replica still running
    stops (gracefully) when the block ends."""
    started: list[Replica] = []

    async def start(name: str, election: ElectionSettings = FAST, **more: Any) -> Replica:
        if not fake_kube.exists("pods", name, NAMESPACE):
            add_pod(fake_kube, name)
        stack = contextlib.AsyncExitStack()
        path = await stack.enter_async_context(proxy_to(fake_kube.url))
        kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{name}", path.url)
        settings = fast_settings(
            tmp_path / "unused.db",
            store=StoreSettings("kube", kubeconfig=kubeconfig),
            election=replace(election, identity=name),
            **{"pod_name": name, **overrides, **more},
        )
        api = await stack.enter_async_context(serving(settings))
        replica = Replica(name, api, path, stack)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in reversed(started):
            await replica.stack.aclose()
