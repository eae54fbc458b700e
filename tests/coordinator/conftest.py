"""A real coordinator on the embedded store, served over HTTP on a free port, and helpers that
speak to it the way agents and users do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.runtime import running_coordinator
from modelcache.coordinator.service import Coordinator
from modelcache.coordinator.settings import CoordinatorSettings, StoreSettings

GiB = 1 << 30
FINISHED = "2026-11-24T10:05:00Z"


def fast_settings(db: Path, **overrides: Any) -> CoordinatorSettings:
    settings = CoordinatorSettings(
        store=StoreSettings("sqlite", sqlite_path=db),
        port=0,
        heartbeat_interval=0.2,
        heartbeat_timeout=0.6,
        not_ready_deletion_timeout=1.0,
        status_interval=0.05,
        long_poll_max=5.0,
        status_render_max_age=0.0,
    )
    return replace(settings, **overrides)


def cache(name: str, uri: str, size: str, *groups: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": list(groups)},
    }


def node_group(name: str, limit: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {"storageLimit": limit},
    }


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class Api:
    """A user and a set of agents talking to one coordinator."""

    url: str
    http: aiohttp.ClientSession
    coordinator: Coordinator

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            body = await response.read()
            assert response.status == expect, (response.status, body.decode())
            return await response.json() if body else None

    async def put(self, obj: dict[str, Any], expect: int | None = None) -> Any:
        plural = obj["kind"].lower() + "s"
        name = obj["metadata"]["name"]
        async with self.http.put(f"{self.url}/v1/{plural}/{name}", json=obj) as response:
            if expect is not None:
                assert response.status == expect, await response.text()
            else:
                assert response.status in (200, 201), await response.text()
            return await response.json()

    async def register(
        self,
        node: str,
        group: str | None,
        free: int = 100 * GiB,
        *,
        token: str | None = None,
        expect: int = 200,
    ) -> Any:
        disk = {"capacityBytes": 200 * GiB, "freeBytes": free}
        body = {"nodeGroup": group, "address": f"http://{node}:9090", "disk": disk}
        return await self.call(
            "POST", f"/v1/agents/{node}/register", expect, json=body, headers=bearer(token)
        )

    async def desired(
        self,
        node: str,
        generation: int = -1,
        wait: int = 0,
        *,
        token: str | None = None,
        expect: int = 200,
    ) -> Any:
        query = f"?generation={generation}&wait={wait}"
        path = f"/v1/agents/{node}/desired{query}"
        return await self.call("GET", path, expect, headers=bearer(token))

    async def report(
        self,
        node: str,
        models: dict[str, str],
        generation: int = 0,
        *,
        token: str | None = None,
        expect: int = 204,
    ) -> Any:
        """`models` maps source URI -> ModelDownload* state; the refusal's body, if any."""
        body = {
            "generation": generation,
            "disk": {"capacityBytes": 200 * GiB, "freeBytes": 100 * GiB},
            "models": [
                {
                    "storageKey": storage_key(uri),
                    "state": state,
                    "bytesDone": 10 if state == "ModelDownloaded" else 5,
                    "bytesTotal": 10,
                    "startedAt": "2026-11-24T10:00:00Z",
                    **({"finishedAt": FINISHED} if state == "ModelDownloaded" else {}),
                }
                for uri, state in models.items()
            ],
        }
        path = f"/v1/agents/{node}/status"
        return await self.call("POST", path, expect, json=body, headers=bearer(token))

    async def settle(self) -> None:
        """Let one reconcile tick run (statuses written, deletions finished)."""
        await self.coordinator.reconcile_once()


@contextlib.asynccontextmanager
async def serving(settings: CoordinatorSettings) -> AsyncIterator[Api]:
    async with (
        running_coordinator(settings) as (coordinator, url),
        aiohttp.ClientSession() as http,
    ):
        yield Api(url, http, coordinator)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(fast_settings(tmp_path / "coordinator.db")) as running:
        yield running
