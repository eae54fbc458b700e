"""Reading the node group from the agent's own Node: real HTTP, against the fake API server for
what it serves and against a tiny stub server for what it cannot show (headers, refusals)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from modelcache.agent.node_identity import read_node_group
from modelcache.agent.settings import KubeAccess
from modelcache.contract.errors import AccessDeniedError, PermanentError, TemporaryError
from modelcache.contract.objects import DEFAULT_NODE_GROUP_LABEL
from tests.coordinator.test_kube_store import kube_node
from tests.fakekube.fixtures import FakeKubeHandle


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield http


class NodeStub:
    """An API server that answers GET /api/v1/nodes/{name} with a fixed status, and remembers
    the Authorization header of every request."""

    def __init__(self, status: int = 200, labels: dict[str, str] | None = None) -> None:
        self.status = status
        self.labels = labels or {}
        self.authorizations: list[str | None] = []

    async def node(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.status != 200:
            body = {"kind": "Status", "code": self.status, "reason": "Refused"}
            return web.json_response(body, status=self.status)
        name = request.match_info["name"]
        return web.json_response(
            {"kind": "Node", "metadata": {"name": name, "labels": self.labels}}
        )


async def _serve(stub: NodeStub) -> TestServer:
    app = web.Application()
    app.router.add_get("/api/v1/nodes/{name}", stub.node)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_the_label_value_is_the_group(
    session: aiohttp.ClientSession, fake_kube: FakeKubeHandle
) -> None:
    fake_kube.create("nodes", kube_node("gpu-a100-0", "a100"))
    access = KubeAccess(api_url=fake_kube.url)
    group = await read_node_group(session, access, "gpu-a100-0", DEFAULT_NODE_GROUP_LABEL)
    assert group == "a100"
    assert ("GET", "/api/v1/nodes/gpu-a100-0") in [(r.method, r.path) for r in fake_kube.requests]


async def test_a_custom_label_key_is_read_and_others_ignored(
    session: aiohttp.ClientSession, fake_kube: FakeKubeHandle
) -> None:
    node = kube_node("gpu-0", "a100")
    node["metadata"]["labels"]["example.com/pool"] = "big-gpus"
    fake_kube.create("nodes", node)
    access = KubeAccess(api_url=fake_kube.url)
    assert await read_node_group(session, access, "gpu-0", "example.com/pool") == "big-gpus"
    assert await read_node_group(session, access, "gpu-0", "example.com/missing") is None


@pytest.mark.parametrize("labels", [None, {}, {DEFAULT_NODE_GROUP_LABEL: ""}])
async def test_no_group_when_the_label_is_absent_or_empty(
    session: aiohttp.ClientSession, fake_kube: FakeKubeHandle, labels: dict[str, str] | None
) -> None:
    node = kube_node("cpu-0", None)
    node["metadata"]["labels"] = labels
    if labels is None:
        del node["metadata"]["labels"]
    fake_kube.create("nodes", node)
    access = KubeAccess(api_url=fake_kube.url)
    assert await read_node_group(session, access, "cpu-0", DEFAULT_NODE_GROUP_LABEL) is None


async def test_a_missing_node_is_temporary_and_names_the_fix(
    session: aiohttp.ClientSession, fake_kube: FakeKubeHandle
) -> None:
    access = KubeAccess(api_url=fake_kube.url)
    with pytest.raises(TemporaryError) as caught:
        await read_node_group(session, access, "gpu-typo-0", DEFAULT_NODE_GROUP_LABEL)
    message = str(caught.value)
    assert "gpu-typo-0" in message
    assert fake_kube.url in message
    assert "NODE_NAME" in message  # what to check next


async def test_an_unreachable_api_server_is_temporary(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(TemporaryError, match="cannot reach the API server") as caught:
        await read_node_group(session, KubeAccess(api_url=url), "gpu-0", DEFAULT_NODE_GROUP_LABEL)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_the_token_file_is_sent_and_reread_after_rotation(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stub = NodeStub(labels={DEFAULT_NODE_GROUP_LABEL: "h100"})
    token = tmp_path / "token"
    token.write_text("first-token\n")  # projected tokens may end with a newline
    server = await _serve(stub)
    try:
        access = KubeAccess(api_url=f"http://127.0.0.1:{server.port}", token_file=token)
        assert await read_node_group(session, access, "gpu-h100-0", DEFAULT_NODE_GROUP_LABEL) == (
            "h100"
        )
        token.write_text("rotated-token")  # the kubelet rotates it in place
        await read_node_group(session, access, "gpu-h100-0", DEFAULT_NODE_GROUP_LABEL)
        without = KubeAccess(api_url=access.api_url)
        await read_node_group(session, without, "gpu-h100-0", DEFAULT_NODE_GROUP_LABEL)
    finally:
        await server.close()
    assert stub.authorizations == ["Bearer first-token", "Bearer rotated-token", None]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refusal_is_permanent_and_says_what_to_grant(
    session: aiohttp.ClientSession, status: int
) -> None:
    stub = NodeStub(status=status)
    server = await _serve(stub)
    try:
        access = KubeAccess(api_url=f"http://127.0.0.1:{server.port}")
        with pytest.raises(AccessDeniedError) as caught:
            await read_node_group(session, access, "gpu-a100-0", DEFAULT_NODE_GROUP_LABEL)
    finally:
        await server.close()
    assert isinstance(caught.value, PermanentError)
    message = str(caught.value)
    assert "gpu-a100-0" in message
    assert str(status) in message
    assert "`get` on nodes" in message
    assert "--node-group" in message


async def test_a_server_error_is_temporary(session: aiohttp.ClientSession) -> None:
    stub = NodeStub(status=503)
    server = await _serve(stub)
    try:
        access = KubeAccess(api_url=f"http://127.0.0.1:{server.port}")
        with pytest.raises(TemporaryError, match="503"):
            await read_node_group(session, access, "gpu-a100-0", DEFAULT_NODE_GROUP_LABEL)
    finally:
        await server.close()
