"""Agent authentication: a token must belong to the node it speaks for.

Standalone: per-node tokens from a YAML file. Kubernetes: projected service account tokens checked
with TokenReview on the fake API server (through the real kubernetes_asyncio client), cached.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcache.contract.errors import TemporaryError, UsageError
from modelcache.coordinator import authenticating
from modelcache.coordinator.authenticating import (
    ReviewedTokens,
    UnauthenticatedError,
    parse_tokens,
)
from modelcache.coordinator.metrics import CoordinatorMetrics
from modelcache.coordinator.runtime import running_coordinator
from modelcache.coordinator.settings import AuthSettings, StoreSettings, settings_from
from modelcache.coordinator.stores.base import ReviewedToken, StoreUnavailableError
from tests.coordinator.conftest import Api, bearer, fast_settings, node_group, serving
from tests.coordinator.test_kube_store import GROUPS, kube_node
from tests.fakekube.fixtures import FakeKubeHandle

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32
A, B = "gpu-a100-0", "gpu-a100-1"


# --- settings ------------------------------------------------------------------------------------


def test_auth_defaults_follow_the_store_and_the_tokens_file() -> None:
    sqlite, _ = settings_from([], {})
    assert sqlite.auth.mode == "none"
    kube, _ = settings_from(["--store", "kube"], {})
    assert kube.auth.mode == "tokenreview"
    assert kube.auth.audience == "modelcache"
    assert kube.auth.service_account == "system:serviceaccount:modelcache-system:modelcache-agent"
    tokens, _ = settings_from([], {"MODELCACHE_AGENT_TOKENS": "/etc/tokens.yaml"})
    assert (tokens.auth.mode, tokens.auth.tokens_file) == ("tokens", Path("/etc/tokens.yaml"))
    assert not tokens.auth.gate_reads
    off, _ = settings_from(["--store", "kube", "--agent-auth", "none"], {})
    assert off.auth.mode == "none"
    gated, _ = settings_from(
        ["--agent-tokens", "t.yaml", "--auth-reads"], {"MODELCACHE_AUTH_READS": "false"}
    )
    assert gated.auth.gate_reads
    custom, _ = settings_from(
        ["--store", "kube", "--agent-service-account", "ops:agent"],
        {"MODELCACHE_AGENT_TOKEN_AUDIENCE": "cache.example.com"},
    )
    assert custom.auth.service_account == "system:serviceaccount:ops:agent"
    assert custom.auth.audience == "cache.example.com"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--agent-auth", "tokens"], "needs --agent-tokens FILE"),
        (["--agent-auth", "tokenreview"], "use it with --store kube"),
        (["--store", "kube", "--agent-tokens", "t.yaml", "--agent-auth", "tokenreview"], "only"),
        (["--auth-reads"], "needs agent authentication"),
        (["--store", "kube", "--agent-service-account", "agent"], "NAMESPACE:NAME"),
    ],
)
def test_contradictory_auth_flags_say_what_to_fix(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        settings_from(args, {})


# --- the tokens file -----------------------------------------------------------------------------


def test_a_tokens_file_is_node_token_lines() -> None:
    assert parse_tokens(f"{A}: {TOKEN_A}\n{B}: {TOKEN_B}\n", "f") == {A: TOKEN_A, B: TOKEN_B}
    assert parse_tokens("", "f") == {}
    digits = "1234567890123456"
    assert parse_tokens(f"0123: {digits}\ny: {TOKEN_A}", "f") == {"0123": digits, "y": TOKEN_A}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (f"{A}: short", "openssl rand -hex 32"),
        (f"{A}: {TOKEN_A}\n{B}: {TOKEN_A}\n", "share a token"),
        (f"- {TOKEN_A}", "node: token"),
        (f"{A}: [{TOKEN_A}]", "both as text"),
        (f"{A}: {TOKEN_A}\n  x: : y", "not valid YAML"),
    ],
)
def test_a_bad_tokens_file_is_refused_with_the_fix(text: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse_tokens(text, "--agent-tokens t.yaml")


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), st.uuids()))
def test_any_map_of_unique_tokens_reads_back(nodes: dict[str, object]) -> None:
    tokens = {node: str(token) for node, token in nodes.items()}
    text = "".join(f"{node}: {token}\n" for node, token in tokens.items())
    assert parse_tokens(text, "f") == tokens


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-tokens.yaml"
    path.write_text(f"{A}: {TOKEN_A}\n{B}: {TOKEN_B}\n")
    return path


@pytest.fixture
async def standalone(tmp_path: Path, tokens_file: Path) -> AsyncIterator[Api]:
    auth = AuthSettings("tokens", tokens_file=tokens_file)
    async with serving(fast_settings(tmp_path / "c.db", auth=auth)) as api:
        await api.put(node_group("a100", "80Gi"))
        yield api


async def test_standalone_writes_need_the_nodes_own_token(standalone: Api) -> None:
    api = standalone
    refused = await api.register(A, "a100", expect=401)
    assert "send the node's token" in refused["error"]
    assert "agent-tokens.yaml" in refused["error"]
    async with api.http.post(f"{api.url}/v1/agents/{A}/register", json={}) as response:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await api.register(A, "a100", token="x" * 32, expect=401)
    assert "not in" in unknown["error"]
    other = await api.register(B, "a100", token=TOKEN_A, expect=403)
    assert other["error"].startswith(f"token belongs to node {A}, not {B}")

    await api.register(A, "a100", token=TOKEN_A)
    await api.report(A, {}, token=TOKEN_A)
    await api.report(A, {}, token=TOKEN_B, expect=403)
    await api.report(A, {}, expect=401)
    await api.call("DELETE", f"/v1/agents/{A}", 403, headers=bearer(TOKEN_B))
    await api.call("DELETE", f"/v1/agents/{A}", 204, headers=bearer(TOKEN_A))
    metrics = api.coordinator.metrics.agent_refusals
    assert metrics.labels("401")._value.get() == 4  # the WWW-Authenticate probe too
    assert metrics.labels("403")._value.get() == 3


async def test_standalone_reads_are_open_unless_gated(tmp_path: Path, tokens_file: Path) -> None:
    auth = AuthSettings("tokens", tokens_file=tokens_file)
    async with serving(fast_settings(tmp_path / "open.db", auth=auth)) as api:
        await api.register(A, "a100", token=TOKEN_A)
        assert (await api.desired(A))["models"] == []  # no token needed to read
    gated = replace(auth, gate_reads=True)
    async with serving(fast_settings(tmp_path / "gated.db", auth=gated)) as api:
        await api.register(A, "a100", token=TOKEN_A)
        await api.desired(A, expect=401)
        await api.desired(A, token=TOKEN_B, expect=403)
        assert (await api.desired(A, token=TOKEN_A))["models"] == []
        # The object API is the users', not the agents': it stays as it is.
        await api.call("GET", "/v1/localmodelnodes")
        await api.call("GET", "/healthz")


async def test_a_node_added_to_the_tokens_file_needs_no_restart(
    standalone: Api, tokens_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authenticating, "RELOAD_CHECK_SECONDS", 0.0)
    new_node, new_token = "gpu-a100-2", "c" * 32
    await standalone.register(new_node, "a100", token=new_token, expect=401)
    tokens_file.write_text(tokens_file.read_text() + f"{new_node}: {new_token}\n")
    await standalone.register(new_node, "a100", token=new_token)
    tokens_file.write_text("not: [valid")  # a broken edit keeps the tokens read before
    await standalone.register(new_node, "a100", token=new_token)
    await standalone.register(new_node, "a100", token="d" * 32, expect=401)


async def test_a_bad_tokens_file_stops_the_coordinator_at_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{A}: short\n")
    settings = fast_settings(tmp_path / "c.db", auth=AuthSettings("tokens", tokens_file=path))
    with pytest.raises(UsageError, match="shorter than 16"):
        async with running_coordinator(settings):
            pass
    missing = replace(settings, auth=AuthSettings("tokens", tokens_file=tmp_path / "nope"))
    with pytest.raises(UsageError, match="cannot read --agent-tokens"):
        async with running_coordinator(missing):
            pass


# --- Kubernetes: TokenReview ---------------------------------------------------------------------


@pytest.fixture
async def kube_auth(fake_kube: FakeKubeHandle, tmp_path: Path) -> AsyncIterator[Api]:
    fake_kube.create(GROUPS, node_group("a100", "80Gi"))
    for node in (A, B):
        fake_kube.create("nodes", kube_node(node, "a100"))
        fake_kube.issue_token(f"token-of-{node}", node=node)
    settings = fast_settings(
        tmp_path / "unused.db",
        store=StoreSettings("kube", kubeconfig=fake_kube.kubeconfig),
        auth=AuthSettings("tokenreview", denied_ttl=0.3),
        status_interval=30.0,
    )
    async with serving(settings) as api:
        await fake_kube.wait_for_watches("nodes")
        yield api


async def test_tokenreview_binds_the_token_to_its_pods_node(
    kube_auth: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_auth
    assert (await api.register(A, None, token=f"token-of-{A}"))["nodeGroup"] == "a100"
    await api.report(A, {}, token=f"token-of-{A}")
    other = await api.report(B, {}, token=f"token-of-{A}", expect=403)
    assert other["error"].startswith(f"token belongs to node {A}, not {B}")
    assert f"modelcache-agent-{A}" in other["error"]  # the pod it came from
    unknown = await api.report(A, {}, token="stolen", expect=401)
    assert "audience 'modelcache'" in unknown["error"]
    await api.report(A, {}, expect=401)

    # The review went with our audience, and was asked once per token, not per report.
    reviews_before = fake_kube.token_reviews()
    for _ in range(5):
        await api.report(A, {}, token=f"token-of-{A}")
    assert fake_kube.token_reviews() == reviews_before
    assert reviews_before == 2  # token-of-A, "stolen"; no token costs no review
    counted = api.coordinator.metrics.token_reviews
    assert counted.labels("accepted")._value.get() == 1
    assert counted.labels("refused")._value.get() == 1


async def test_tokenreview_refuses_other_accounts_unbound_tokens_and_other_audiences(
    kube_auth: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_auth
    fake_kube.issue_token("default-sa", service_account="default:default", node=A)
    wrong_account = await api.register(A, None, token="default-sa", expect=403)
    assert "system:serviceaccount:default:default" in wrong_account["error"]
    assert "--agent-service-account" in wrong_account["error"]
    fake_kube.issue_token("no-node", node=None)
    unbound = await api.register(A, None, token="no-node", expect=403)
    assert "bound to no node" in unbound["error"]
    # The pod's ordinary token is for the API server: never accepted by the coordinator.
    fake_kube.issue_token(
        "api-token", node=A, audiences=["https://kubernetes.default.svc.cluster.local"]
    )
    api_token = await api.register(A, None, token="api-token", expect=401)
    assert "audiences" in api_token["error"]


async def test_a_refused_token_is_refused_only_briefly(
    kube_auth: Api, fake_kube: FakeKubeHandle
) -> None:
    api = kube_auth
    await api.register(A, None, token="new-token", expect=401)
    fake_kube.issue_token("new-token", node=A)  # e.g. the pod's token arrived late
    await api.register(A, None, token="new-token", expect=401)  # within denied_ttl: cached
    await asyncio.sleep(0.35)
    await api.register(A, None, token="new-token")


# --- the review cache, against a scripted reviewer -----------------------------------------------


class ScriptedReviewer:
    """Stands in for the kube store's TokenReview (the `TokenReviewer` protocol)."""

    def __init__(self) -> None:
        self.answers: list[ReviewedToken | Exception] = []
        self.asked: list[str] = []

    async def review_token(self, token: str, audience: str) -> ReviewedToken:
        self.asked.append(token)
        answer = self.answers.pop(0) if self.answers else _accepted(A)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _accepted(node: str) -> ReviewedToken:
    account = "system:serviceaccount:modelcache-system:modelcache-agent"
    return ReviewedToken(True, account, node, f"agent-{node}", ("modelcache",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reviewed(**auth: float) -> tuple[ReviewedTokens, ScriptedReviewer, Clock]:
    reviewer, clock = ScriptedReviewer(), Clock()
    settings = AuthSettings("tokenreview", **auth)  # type: ignore[arg-type]
    return ReviewedTokens(reviewer, settings, CoordinatorMetrics.create(), clock), reviewer, clock


async def test_an_unreachable_api_server_is_a_503_and_is_not_remembered() -> None:
    tokens, reviewer, _ = _reviewed()
    reviewer.answers = [StoreUnavailableError("Kubernetes API unreachable", retry_after=3)]
    with pytest.raises(TemporaryError, match="cannot check the agent's token now") as caught:
        await tokens.identify("t")
    assert caught.value.retry_after == 3
    assert (await tokens.identify("t")).node == A
    assert reviewer.asked == ["t", "t"]


async def test_accepted_tokens_are_trusted_for_the_ttl_and_never_past_their_expiry() -> None:
    tokens, reviewer, clock = _reviewed(review_ttl=60.0)
    await tokens.identify("t")
    clock.now += 59
    await tokens.identify("t")
    assert reviewer.asked == ["t"]
    clock.now += 2
    await tokens.identify("t")
    assert reviewer.asked == ["t", "t"]

    def jwt(exp: float) -> str:
        claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).rstrip(b"=")
        return f"header.{claims.decode()}.signature"

    soon = jwt(time.time() + 10)  # expires in 10 s: trusted 10 s, not 60
    await tokens.identify(soon)
    clock.now += 11
    await tokens.identify(soon)
    assert reviewer.asked.count(soon) == 2


async def test_the_cache_is_bounded() -> None:
    tokens, reviewer, _ = _reviewed(review_cache_size=3)
    for i in range(5):
        await tokens.identify(f"t{i}")
    await tokens.identify("t4")  # still cached
    await tokens.identify("t0")  # dropped for the newer ones
    assert reviewer.asked == ["t0", "t1", "t2", "t3", "t4", "t0"]


async def test_a_refused_token_says_what_the_api_server_said() -> None:
    tokens, reviewer, _ = _reviewed()
    reviewer.answers = [ReviewedToken(False, error="token has expired")]
    with pytest.raises(UnauthenticatedError, match="token has expired"):
        await tokens.identify("old")
