"""The agent's coordinator client sends the node's token, follows its rotation, and turns a
refusal into an error that says what to fix; against a real coordinator with a tokens file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modelcache.agent.coordinator_client import (
    REREAD_SECONDS,
    CoordinatorClient,
    CoordinatorRefusedError,
    TokenFile,
)
from modelcache.contract.agent_wire import Disk
from modelcache.contract.errors import TemporaryError
from modelcache.coordinator.settings import AuthSettings
from tests.coordinator.conftest import Api, fast_settings, node_group, serving

NODE, OTHER = "gpu-a100-0", "gpu-a100-1"
TOKEN, OTHER_TOKEN = "n0-" + "a" * 32, "n1-" + "b" * 32
DISK = Disk(200 << 30, 100 << 30)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[Api]:
    tokens = tmp_path / "agent-tokens.yaml"
    tokens.write_text(f"{NODE}: {TOKEN}\n{OTHER}: {OTHER_TOKEN}\n")
    auth = AuthSettings("tokens", tokens_file=tokens)
    async with serving(fast_settings(tmp_path / "c.db", auth=auth)) as api:
        await api.put(node_group("a100", "80Gi"))
        yield api


async def test_the_token_goes_with_every_call_and_rotates(coordinator: Api, tmp_path: Path) -> None:
    path, clock = tmp_path / "token", Clock()
    path.write_text(TOKEN + "\n")
    async with aiohttp.ClientSession() as http:
        client = CoordinatorClient(http, coordinator.url, NODE, TokenFile(path, clock))
        await client.register("a100", "http://n0:9090", DISK)
        await client.report(0, {"disk": {"capacityBytes": 1, "freeBytes": 1}, "models": []})
        assert not (await client.desired(-1, 0)).models

        path.write_text(OTHER_TOKEN)  # kubelet rewrote the file; the old token is still used
        await client.report(0, {"disk": {"capacityBytes": 1, "freeBytes": 1}, "models": []})
        clock.now += REREAD_SECONDS  # now it is read again: this one is another node's
        with pytest.raises(CoordinatorRefusedError, match=r"\(403\): token belongs to node") as e:
            await client.register("a100", "http://n0:9090", DISK)
        assert "check that --node-name is the node the token was issued for" in str(e.value)


async def test_a_refused_token_is_read_again_at_once(coordinator: Api, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("x" * 40)
    async with aiohttp.ClientSession() as http:
        client = CoordinatorClient(http, coordinator.url, NODE, TokenFile(path, Clock()))
        with pytest.raises(CoordinatorRefusedError, match=r"\(401\)") as e:
            await client.register("a100", "http://n0:9090", DISK)
        assert f"the token in {path}" in str(e.value)
        assert "--agent-tokens" in str(e.value)
        path.write_text(TOKEN)  # fixed: no need to wait for the re-read interval
        await client.register("a100", "http://n0:9090", DISK)


async def test_no_token_file_sends_none_and_is_told_how_to_fix_it(coordinator: Api) -> None:
    async with aiohttp.ClientSession() as http:
        client = CoordinatorClient(http, coordinator.url, NODE)
        with pytest.raises(CoordinatorRefusedError, match="this agent sent no token") as e:
            await client.register("a100", "http://n0:9090", DISK)
        assert "send the node's token" in str(e.value)


async def test_an_unreadable_token_file_is_a_temporary_error(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "missing")
    with pytest.raises(TemporaryError, match="cannot read the token file"):
        await tokens.headers()
    (tmp_path / "missing").write_text("  \n")
    with pytest.raises(TemporaryError, match="is empty"):
        await tokens.headers()
