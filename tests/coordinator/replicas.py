"""Coordinator replicas with leader election on the fake API server, each reaching it over a
network path a test can cut (a kill: nothing it sends arrives any more)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelcache.coordinator.settings import ElectionSettings, StoreSettings
from tests.coordinator.conftest import Api, fast_settings, serving
from tests.coordinator.tcp_proxy import TcpProxy, proxy_to
from tests.fakekube.fixtures import FakeKubeHandle, write_kubeconfig

NAMESPACE = "modelcache-system"
LEASE = "modelcache-coordinator"
FAST = ElectionSettings(identity="", lease_duration=1.5, renew_deadline=1.0, retry_period=0.2)
"""Written to the Lease as 2 s (whole seconds)."""


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
    """`start(name, election=FAST, **more_overrides)` starts a replica whose holderIdentity is
    `name`; every replica still running stops (gracefully) when the block ends."""
    started: list[Replica] = []

    async def start(name: str, election: ElectionSettings = FAST, **more: Any) -> Replica:
        stack = contextlib.AsyncExitStack()
        path = await stack.enter_async_context(proxy_to(fake_kube.url))
        kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{name}", path.url)
        settings = fast_settings(
            tmp_path / "unused.db",
            store=StoreSettings("kube", kubeconfig=kubeconfig),
            election=replace(election, identity=name),
            **{**overrides, **more},
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
