"""Agents that prove their node: real agents send their token files, the coordinator checks them
(TokenReview on the fake API server, or a standalone tokens file), pulls go on as usual, and an
agent holding another node's token is kept out until it has its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelcache.agent.settings import KubeAccess
from modelcache.coordinator.settings import AuthSettings
from tests.coordinator.conftest import cache, fast_settings, node_group
from tests.coordinator.test_kube_store import CACHES
from tests.e2e.conftest import REPO_URI, Cluster, eventually
from tests.e2e.test_kube_e2e import A100, ALL_NODES, H100, running_kube_cluster
from tests.fakekube.fixtures import FakeKubeHandle
from tests.hub_origin import HubFixture


def _token_file(root: Path, node: str, token: str) -> Path:
    """What the DaemonSet's projected volume holds: the token, no newline."""
    path = root / "tokens" / node
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    return path


def _refusals(cluster: Cluster, code: str) -> float:
    value: float = cluster.api.coordinator.metrics.agent_refusals.labels(code)._value.get()
    return value


@pytest.fixture
async def reviewed_cluster(
    tmp_path: Path, hub: HubFixture, fake_kube: FakeKubeHandle
) -> AsyncIterator[Cluster]:
    async with running_kube_cluster(
        tmp_path, hub, fake_kube, auth=AuthSettings("tokenreview")
    ) as cluster:
        yield cluster


async def test_agents_with_projected_tokens_pull_and_a_borrowed_token_is_refused(
    reviewed_cluster: Cluster,
    fake_kube: FakeKubeHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = reviewed_cluster
    tokens = {node: fake_kube.issue_token(f"jwt-of-{node}", node=node) for node in ALL_NODES}
    fake_kube.create(CACHES, cache("tiny", REPO_URI, "10Mi", "a100", "h100"))
    access = KubeAccess(api_url=fake_kube.url)
    for node in A100:
        token_file = _token_file(tmp_path, node, tokens[node])
        await cluster.start_agent(node, None, kube=access, token_file=token_file)
    # The h100 agent was given the token of a100-0's pod.
    borrowed = _token_file(tmp_path, H100, tokens[A100[0]])
    await cluster.start_agent(H100, None, kube=access, token_file=borrowed)

    def pulled() -> bool:
        status = (fake_kube.get(CACHES, "tiny").get("status") or {}).get("nodeStatus") or {}
        return all(status.get(node) == "NodeDownloaded" for node in A100)

    await eventually(pulled, "both a100 agents pulled and reported through TokenReview", 10)
    assert all(cluster.holds_model(node) for node in A100)
    await eventually(lambda: _refusals(cluster, "403") >= 1, "the h100 agent was refused")
    registry = cluster.api.coordinator.registry
    assert H100 not in registry.nodes or registry.nodes[H100].registration is None
    assert not cluster.model_dir(H100).exists()
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and H100 in r.getMessage()]
    assert refused, "the agent logs the refusal"
    message = refused[0].getMessage()
    assert f"token belongs to node {A100[0]}, not {H100}" in message
    assert "--node-name" in message

    # Its own token arrives (the file is re-read after a refusal): it registers and pulls.
    borrowed.write_text(tokens[H100])
    await eventually(lambda: cluster.holds_model(H100), "the h100 agent pulled with its token", 15)
    # Every agent reports every 0.2 s here, yet each token was reviewed about once.
    assert fake_kube.token_reviews() <= 2 * len(ALL_NODES)


async def test_standalone_agents_with_their_tokens_pull_and_one_without_is_kept_out(
    tmp_path: Path, hub: HubFixture, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = {"gpu-a100-0": "a0-" + "x" * 40, "gpu-a100-1": "a1-" + "y" * 40}
    tokens_file = tmp_path / "agent-tokens.yaml"
    tokens_file.write_text("".join(f"{node}: {token}\n" for node, token in tokens.items()))
    auth = AuthSettings("tokens", tokens_file=tokens_file)
    cluster = Cluster(hub, tmp_path / "nodes", fast_settings(tmp_path / "c.db", auth=auth))
    await cluster.start_coordinator()
    try:
        await cluster.api.put(node_group("a100", "10Gi"))
        await cluster.api.put(cache("tiny", REPO_URI, "10Mi", "a100"))
        node = "gpu-a100-0"
        token_file = _token_file(tmp_path, node, tokens[node])
        await cluster.start_agent(node, "a100", token_file=token_file)
        await cluster.start_agent("gpu-a100-1", "a100")  # no --token-file

        async def pulled() -> bool:
            return await cluster.node_states("tiny") == {node: "NodeDownloaded"}

        await eventually(pulled, "the agent with its token pulled and reported")
        await eventually(lambda: _refusals(cluster, "401") >= 1, "the other one was refused")
        assert not cluster.model_dir("gpu-a100-1").exists()
        refused = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("this agent sent no token" in m and "--token-file" in m for m in refused)
    finally:
        await cluster.stop_coordinator()
        await cluster.stop_all()
