"""A whole system on one machine: the Hub origin, a coordinator, and agents with their own cache
roots, all real servers in this process (agents that must be killed run as real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from modelcache.agent.endpoints import AgentState
from modelcache.agent.runtime import running_agent
from modelcache.agent.settings import AgentSettings
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.settings import CoordinatorSettings
from tests.coordinator.conftest import Api, fast_settings, serving
from tests.hub_origin import FAST, HubFixture, tree_of

REPO_URI = "hf://acme/tiny-model"
KEY = storage_key(REPO_URI)


def agent_settings(
    coordinator: str, hub: HubFixture, root: Path, node: str, group: str | None, **overrides: Any
) -> AgentSettings:
    settings = AgentSettings(
        coordinator=coordinator,
        node_name=node,
        cache_root=root / node,
        node_group=group,
        host="127.0.0.1",
        port=0,
        deletion_grace=0.2,
        retry_base_delay=0.05,
        retry_max_delay=0.5,
        progress_interval=0.05,
        heartbeat_interval=0.2,
        long_poll_seconds=2.0,
        rescan_interval=0.5,
        pull=replace(FAST, min_free_bytes=0),
        credentials=hub.credentials,
    )
    return replace(settings, **overrides)


@dataclass
class Cluster:
    hub: HubFixture
    root: Path
    coordinator_settings: CoordinatorSettings
    agents: dict[str, tuple[AgentState, str]] = field(default_factory=dict)
    _stacks: dict[str, contextlib.AsyncExitStack] = field(default_factory=dict)
    _api: Api | None = None
    _coordinator_stack: contextlib.AsyncExitStack | None = None

    @property
    def api(self) -> Api:
        assert self._api is not None, "the coordinator is stopped"
        return self._api

    async def start_coordinator(self) -> None:
        stack = contextlib.AsyncExitStack()
        self._api = await stack.enter_async_context(serving(self.coordinator_settings))
        self._coordinator_stack = stack
        # A restart comes back on the same port, where the agents look for it.
        port = int(self._api.url.rsplit(":", 1)[1])
        self.coordinator_settings = replace(self.coordinator_settings, port=port)

    async def stop_coordinator(self) -> None:
        assert self._coordinator_stack is not None
        await self._coordinator_stack.aclose()
        self._coordinator_stack = None

    @property
    def coordinator_url(self) -> str:
        """Where agents find the coordinator, running or not (it restarts on the same port)."""
        return f"http://127.0.0.1:{self.coordinator_settings.port}"

    def settings(self, node: str, group: str | None, **overrides: Any) -> AgentSettings:
        coordinator = overrides.pop("coordinator", self.coordinator_url)
        return agent_settings(coordinator, self.hub, self.root, node, group, **overrides)

    async def start_agent(self, node: str, group: str | None, **overrides: Any) -> AgentState:
        stack = contextlib.AsyncExitStack()
        state, url = await stack.enter_async_context(
            running_agent(self.settings(node, group, **overrides))
        )
        self._stacks[node] = stack
        self.agents[node] = (state, url)
        return state

    async def stop_agent(self, node: str) -> None:
        await self._stacks.pop(node).aclose()
        del self.agents[node]

    async def stop_all(self) -> None:
        for node in list(self._stacks):
            await self.stop_agent(node)

    def model_dir(self, node: str, key: str = KEY) -> Path:
        return self.root / node / "models" / key

    def holds_model(self, node: str) -> bool:
        """The node's folder holds exactly the origin's files, byte for byte."""
        folder = self.model_dir(node)
        return folder.is_dir() and tree_of(folder) == tree_of(self.hub.source_dir)

    async def cache(self, name: str) -> Any:
        return await self.api.call("GET", f"/v1/localmodelcaches/{name}")

    async def node_states(self, name: str) -> dict[str, str]:
        body = await self.cache(name)
        return dict(body.get("status", {}).get("nodeStatus", {}))


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], what: str, within: float = 15.0
) -> None:
    """Poll `check` until it holds; fail with `what` when it never does."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(tmp_path: Path, hub: HubFixture) -> AsyncIterator[Cluster]:
    running = Cluster(hub, tmp_path / "nodes", fast_settings(tmp_path / "coordinator.db"))
    await running.start_coordinator()
    try:
        yield running
    finally:
        # The coordinator first: it waits for its own long-poll handlers as it shuts down,
        # whereas handlers of connections that agents drop finish only on a later loop turn.
        if running._coordinator_stack is not None:
            await running.stop_coordinator()
        await running.stop_all()
