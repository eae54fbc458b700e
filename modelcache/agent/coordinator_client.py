"""The agent's side of the agent protocol (see `modelcache.contract.agent_wire`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
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

REREAD_SECONDS = 60.0
"""How long a token read from --token-file is used before the file is read again. Kubelet
rewrites a projected token at 80% of its lifetime (>= 10 minutes), the old one staying valid."""


class NotRegisteredError(TemporaryError):
    """The coordinator does not know this node (it restarted or forgot it): register again."""


class CoordinatorRefusedError(PermanentError):
    """The coordinator refused this agent's token (401/403): only a new token or a corrected
    configuration helps, but the agent keeps trying (the file may be fixed, or rotate)."""


class TokenFile:
    """The node's bearer token, read from a file that may change under us (rotation)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._token: str | None = None
        self._read_at = 0.0

    async def headers(self) -> dict[str, str]:
        if self.path is None:
            return {}
        now = self._clock()
        if self._token is None or now - self._read_at >= REREAD_SECONDS:
            try:
                token = (await asyncio.to_thread(self.path.read_text)).strip()
            except OSError as e:
                raise TemporaryError(
                    f"cannot read the token file {self.path} ({e}): the coordinator takes no "
                    "registration or report from this agent without it; retrying"
                ) from e
            if not token:
                raise TemporaryError(f"the token file {self.path} is empty; retrying")
            self._token, self._read_at = token, now
        return {"Authorization": f"Bearer {self._token}"}

    def forget(self) -> None:
        """Read the file again before the next call (the coordinator refused what we sent)."""
        self._token = None


class CoordinatorClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        node: str,
        token: TokenFile | None = None,
    ) -> None:
        self._session = session
        self._base = f"{base_url}/v1/agents/{node}"
        self._node = node
        self._token = token or TokenFile(None)
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
        headers = await self._token.headers()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                url,
                params=query,
                data=orjson.dumps(body) if body is not None else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds) if seconds else None,
            ) as response:
                text = await response.text()
                if response.status in (401, 403):
                    self._token.forget()
                    raise self._refused(response.status, method, path, _error_of(text))
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

    def _refused(self, status: int, method: str, path: str, error: str) -> CoordinatorRefusedError:
        sent = f"the token in {self._token.path}" if self._token.path else "no token"
        if status == 401:
            remedy = (
                f"this agent sent {sent}: give it node {self._node}'s token with --token-file "
                "(standalone: the node's entry in the coordinator's --agent-tokens file; "
                "Kubernetes: the projected service account token, audience modelcache)"
            )
        else:
            remedy = (
                f"this agent sent {sent} for node {self._node}: check that --node-name is the "
                "node the token was issued for"
            )
        return CoordinatorRefusedError(
            f"coordinator at {self.base_url} refused {method} {path} ({status}): {error}. "
            f"{remedy}; retrying with backoff"
        )


def _error_of(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text[:200]
