"""The agent's side of the agent protocol (see `modelcache.contract.agent_wire`)."""

from __future__ import annotations

import json
from typing import Any, cast

import aiohttp
import orjson

from modelcache.contract.agent_wire import (
    DesiredList,
    Disk,
    RawRegistered,
    RawStatusReport,
    parse_desired,
)
from modelcache.contract.errors import ModelCacheError, PermanentError, TemporaryError


class NotRegisteredError(TemporaryError):
    """The coordinator does not know this node (it restarted or forgot it): register again."""


class CoordinatorClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, node: str) -> None:
        self._session = session
        self._base = f"{base_url}/v1/agents/{node}"
        self.base_url = base_url

    async def register(self, node_group: str | None, address: str, disk: Disk) -> RawRegistered:
        body = {
            "nodeGroup": node_group,
            "address": address,
            "disk": {"capacityBytes": disk.capacity_bytes, "freeBytes": disk.free_bytes},
        }
        answer = await self._call("POST", "/register", body=body)
        heartbeat = answer.get("heartbeatSeconds") if isinstance(answer, dict) else None
        if not isinstance(heartbeat, int | float):
            raise TemporaryError(f"coordinator at {self.base_url} answered an unknown registration")
        return cast(RawRegistered, answer)

    async def desired(self, generation: int, wait: float) -> DesiredList:
        """The node's list; waits up to `wait` seconds while it is still `generation`."""
        query = {"generation": str(generation), "wait": str(int(wait))}
        answer = await self._call("GET", "/desired", query=query, seconds=wait + 15)
        try:
            return parse_desired(answer)
        except ModelCacheError as e:
            raise TemporaryError(f"coordinator at {self.base_url} sent a bad list: {e}") from e

    async def report(self, generation: int, body: RawStatusReport) -> None:
        await self._call("POST", "/status", body={"generation": generation, **body})

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: dict[str, str] | None = None,
        seconds: float | None = None,
    ) -> Any:
        url = self._base + path
        try:
            async with self._session.request(
                method,
                url,
                params=query,
                data=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=aiohttp.ClientTimeout(total=seconds) if seconds else None,
            ) as response:
                text = await response.text()
                if response.status == 404:
                    raise NotRegisteredError(f"coordinator does not know this node: {text[:200]}")
                if response.status >= 500 or response.status == 429:
                    raise TemporaryError(
                        f"coordinator at {self.base_url} answered {response.status} to "
                        f"{method} {path}: {_error_of(text)}; retrying"
                    )
                if response.status >= 400:
                    raise PermanentError(
                        f"coordinator at {self.base_url} refused {method} {path} "
                        f"({response.status}): {_error_of(text)}"
                    )
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise TemporaryError(
                f"coordinator at {self.base_url} unreachable ({type(e).__name__}: {e}); "
                "retrying; pulls go on meanwhile"
            ) from e


def _error_of(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text[:200]
