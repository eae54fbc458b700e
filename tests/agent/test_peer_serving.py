"""The agent's peer routes, against its real HTTP server and chunk boards over real files.

The agents here have no coordinator (they keep retrying to register, which costs nothing): each
test hands the keeper a desired list itself, as the coordinator link would, to set the group's
peer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelcache.agent import peer_serving
from modelcache.agent.endpoints import AgentState
from modelcache.agent.runtime import running_agent
from modelcache.agent.settings import AgentSettings
from modelcache.agent.shelf import PeerTokens
from modelcache.contract.agent_wire import DesiredList, WantedModel
from modelcache.contract.peer_wire import parse_chunk_map
from modelcache.pulling.manifests import Manifest, ManifestFile, write_manifest
from modelcache.pulling.peering import BoardFile, ChunkBoard
from modelcache.pulling.planning import plan_chunks
from modelcache.pulling.staging import StagingPaths

KEY = "0123456789abcdef"
KiB = 1024
CHUNK = 64 * KiB
TOKEN = "group-a100-token-0123456789"
pytestmark = pytest.mark.timeout(10)


@dataclass
class Agent:
    state: AgentState
    url: str
    http: aiohttp.ClientSession
    generation: int = 0

    def give_token(self, token: str | None, models: tuple[WantedModel, ...] = ()) -> None:
        """What the coordinator link does with each new desired list."""
        self.generation += 1
        desired = DesiredList(
            self.generation, "a100", {m.storage_key: m for m in models}, peer_token=token
        )
        self.state.keeper.apply(desired)

    async def get(
        self, path: str, token: str | None = TOKEN, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.get(f"{self.url}{path}", headers=headers) as response:
            return response.status, dict(response.headers), await response.read()

    async def chunks(self, query: str = "", token: str | None = TOKEN) -> dict[str, Any]:
        status, _, body = await self.get(f"/v1/peer/models/{KEY}/chunks{query}", token)
        assert status == 200, body
        raw: dict[str, Any] = __import__("json").loads(body)
        parse_chunk_map(raw)  # what a peer would accept
        return raw

    async def piece(self, index: int, start: int, end: int) -> tuple[int, dict[str, str], bytes]:
        """Bytes [start, end) of file `index`, as a peer asks for them."""
        path = f"/v1/peer/models/{KEY}/files/{index}"
        return await self.get(path, Range=f"bytes={start}-{end - 1}")

    async def metric(self, name: str, **labels: str) -> float:
        async with self.http.get(f"{self.url}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@contextlib.asynccontextmanager
async def _agent(tmp_path: Path, **overrides: Any) -> AsyncIterator[Agent]:
    settings = AgentSettings(
        coordinator="http://127.0.0.1:9",  # nothing listens: the agent stands alone
        node_name="gpu-a100-0",
        cache_root=tmp_path / "cache",
        node_group="a100",
        host="127.0.0.1",
        port=0,
        deletion_grace=0.1,
        **overrides,
    )
    async with running_agent(settings) as (state, url), aiohttp.ClientSession() as http:
        yield Agent(state, url, http)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with _agent(tmp_path) as running:
        yield running


def _write_files(root: Path, sizes: dict[str, int]) -> list[bytes]:
    rng = random.Random(7)
    contents = []
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        contents.append(data)
    return contents


def _digests(contents: list[bytes], chunk_size: int) -> list[list[str]]:
    plan = plan_chunks([len(c) for c in contents], chunk_size)
    return [
        [hashlib.sha256(data[c.start : c.end]).hexdigest() for c in chunks]
        for data, chunks in zip(contents, plan, strict=True)
    ]


@dataclass
class Served:
    board: ChunkBoard
    root: Path
    contents: list[bytes]
    digests: list[list[str]]

    def add(self, file_index: int, chunk_index: int) -> None:
        self.board.add(file_index, chunk_index, self.digests[file_index][chunk_index])


def _pulling(
    agent: Agent,
    root: Path,
    sizes: dict[str, int],
    held: Callable[[int, int], bool] = lambda f, c: True,
    chunk_size: int = CHUNK,
) -> Served:
    """A board as a running pull keeps it: files in staging, verified chunks recorded."""
    root.mkdir(parents=True, exist_ok=True)
    contents = _write_files(root, sizes)
    board = agent.state.keeper.shelf.pulling(KEY)
    files = [BoardFile(name, size) for name, size in sizes.items()]
    board.start("fingerprint-1", chunk_size, files, root)
    served = Served(board, root, contents, _digests(contents, chunk_size))
    for f, chunks in enumerate(served.digests):
        for c in range(len(chunks)):
            if held(f, c):
                served.add(f, c)
    return served


# --- chunk maps ---------------------------------------------------------------------------------


async def test_chunk_map_pages_from_next_and_a_long_poll_wakes_on_add(
    agent: Agent, tmp_path: Path
) -> None:
    agent.give_token(TOKEN)
    # weights: chunks 64K, 64K, 72K (the 8K tail joins the last); config: 64K, 36K
    sizes = {"weights.bin": 200 * KiB, "config/model.json": 100 * KiB}
    served = _pulling(agent, tmp_path / "staging", sizes, held=lambda f, c: (f, c) != (0, 2))
    served.board.fetching(0, 2, 1000)

    first = await agent.chunks("?from=0")
    assert first["fingerprint"] == "fingerprint-1"
    assert first["chunkSize"] == CHUNK
    assert first["complete"] is False
    assert first["next"] == 4
    assert first["records"] == [
        [0, 0, served.digests[0][0]],
        [0, 1, served.digests[0][1]],
        [1, 0, served.digests[1][0]],
        [1, 1, served.digests[1][1]],
    ]
    assert first["inflight"] == [[0, 2, 1000]]
    assert (await agent.chunks("?from=3"))["records"] == [[1, 1, served.digests[1][1]]]

    polling = asyncio.create_task(agent.chunks("?from=4&wait=5"), name="test-long-poll")
    await asyncio.sleep(0.2)
    assert not polling.done(), "nothing new: the poll waits"
    started = time.monotonic()
    served.add(0, 2)
    woken = await asyncio.wait_for(polling, 2)
    assert time.monotonic() - started < 1.0
    assert woken["records"] == [[0, 2, served.digests[0][2]]]
    assert woken["next"] == 5
    assert woken["inflight"] == []

    started = time.monotonic()
    idle = await agent.chunks("?from=5&wait=0.3")
    assert 0.25 <= time.monotonic() - started < 2.0
    assert idle["records"] == []
    assert idle["next"] == 5

    polling = asyncio.create_task(agent.chunks("?from=5&wait=5"), name="test-long-poll")
    await asyncio.sleep(0.1)
    served.board.published(served.root)
    assert (await asyncio.wait_for(polling, 2))["complete"] is True


async def test_the_long_poll_is_capped_and_ends_when_the_pull_stops(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.give_token(TOKEN)
    served = _pulling(agent, tmp_path / "staging", {"w.bin": 100 * KiB})
    monkeypatch.setattr(peer_serving, "MAX_WAIT", 0.2)
    started = time.monotonic()
    assert (await agent.chunks("?from=2&wait=3600"))["records"] == []
    assert time.monotonic() - started < 1.5

    monkeypatch.setattr(peer_serving, "MAX_WAIT", 10.0)
    polling = asyncio.create_task(
        agent.get(f"/v1/peer/models/{KEY}/chunks?from=2&wait=5"), name="test-long-poll"
    )
    await asyncio.sleep(0.1)
    served.board.close()  # the pull failed
    status, _, body = await asyncio.wait_for(polling, 2)
    assert status == 404
    assert b"neither holds nor pulls" in body


@pytest.mark.parametrize(
    "query", ["?from=-1", "?from=x", "?wait=nan", "?wait=-1", "?from=1.5"], ids=str
)
async def test_bad_query_parameters_are_400(agent: Agent, tmp_path: Path, query: str) -> None:
    agent.give_token(TOKEN)
    _pulling(agent, tmp_path / "staging", {"w.bin": 100 * KiB})
    status, _, body = await agent.get(f"/v1/peer/models/{KEY}/chunks{query}")
    assert status == 400, body
    assert b"'from' must be" in body


async def test_models_it_neither_holds_nor_pulls_are_404(agent: Agent, tmp_path: Path) -> None:
    agent.give_token(TOKEN)
    for path in (
        f"/v1/peer/models/{KEY}/chunks",  # nothing at all
        "/v1/peer/models/..%2F..%2Fetc/chunks",  # not a storage key
        f"/v1/peer/models/{KEY}/files/0",
    ):
        status, _, body = await agent.get(path)
        assert status == 404, path
        assert b"fetch it from another peer or the origin" in body
    board = agent.state.keeper.shelf.pulling(KEY)  # not started: the pull is still listing
    status, _, _ = await agent.get(f"/v1/peer/models/{KEY}/chunks")
    assert status == 404
    board.start("fp", CHUNK, [BoardFile("w.bin", 10)], tmp_path)
    assert (await agent.chunks())["records"] == []
    status, _, body = await agent.get(f"/v1/peer/models/{KEY}/files/1", Range="bytes=0-1")
    assert status == 404
    assert b"has no file 1" in body


# --- bytes --------------------------------------------------------------------------------------


async def test_ranges_inside_held_chunks_are_served_byte_exact(
    agent: Agent, tmp_path: Path
) -> None:
    agent.give_token(TOKEN)
    sizes = {"weights.bin": 200 * KiB, "config/model.json": 100 * KiB}
    served = _pulling(agent, tmp_path / "staging", sizes)
    plan = plan_chunks(list(sizes.values()), CHUNK)
    for f, chunks in enumerate(plan):
        for chunk in chunks:  # whole chunks, as peers ask: the digest of the record matches
            status, headers, body = await agent.piece(f, chunk.start, chunk.end)
            assert status == 206
            assert hashlib.sha256(body).hexdigest() == served.digests[f][chunk.index]
            size = len(served.contents[f])
            assert headers["Content-Range"] == f"bytes {chunk.start}-{chunk.end - 1}/{size}"
            assert int(headers["Content-Length"]) == chunk.end - chunk.start
    weights = served.contents[0]
    for start, end in [(0, 1), (100, 70 * KiB), (60 * KiB, 200 * KiB), (200 * KiB - 1, 200 * KiB)]:
        status, _, body = await agent.piece(0, start, end)
        assert status == 206
        assert body == weights[start:end]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=60000-70000",  # runs into chunk 1, not held
        f"bytes={CHUNK}-{CHUNK}",  # inside chunk 1
        "bytes=0-99,200-299",  # several ranges
        "bytes=-100",  # a suffix
        "bytes=100-",  # open-ended
        "bytes=100-50",  # backwards
        f"bytes=0-{200 * KiB}",  # past the end
        "items=0-1",
        "",  # no Range at all
    ],
)
async def test_ranges_outside_held_chunks_are_416(
    agent: Agent, tmp_path: Path, header: str
) -> None:
    agent.give_token(TOKEN)
    _pulling(agent, tmp_path / "staging", {"weights.bin": 200 * KiB}, held=lambda f, c: c != 1)
    headers = {"Range": header} if header else {}
    status, answer, body = await agent.get(f"/v1/peer/models/{KEY}/files/0", **headers)
    assert status == 416, body
    assert answer["Content-Range"] == f"bytes */{200 * KiB}"
    assert b"read its chunk map" in body


async def test_a_file_moved_by_publishing_is_503_until_the_board_follows(
    agent: Agent, tmp_path: Path
) -> None:
    agent.give_token(TOKEN)
    served = _pulling(agent, tmp_path / "staging", {"weights.bin": 100 * KiB})
    published = tmp_path / "published"
    os.rename(served.root, published)  # what publishing does, before the board hears of it
    status, headers, body = await agent.piece(0, 0, 100)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert b"retry" in body
    served.board.published(published)
    status, _, body = await agent.piece(0, 0, 100)
    assert status == 206
    assert body == served.contents[0][:100]


# --- who may read -------------------------------------------------------------------------------


async def test_only_the_groups_token_gets_in(agent: Agent, tmp_path: Path) -> None:
    _pulling(agent, tmp_path / "staging", {"w.bin": 100 * KiB})
    path = f"/v1/peer/models/{KEY}/chunks"
    status, headers, body = await agent.get(path)
    assert status == 401, "no desired list yet: no token known"
    assert b"has no peer token yet" in body
    assert headers["WWW-Authenticate"].startswith("Bearer")

    agent.give_token(TOKEN)
    for token, complaint in [
        (None, b"need 'Authorization: Bearer <peerToken>'"),
        ("", b"need 'Authorization: Bearer <peerToken>'"),
        ("group-h100-token-0123456789", b"does not match"),  # another group's
        (TOKEN + "x", b"does not match"),
        (TOKEN[:-1], b"does not match"),
        ("t\u00e9st", b"does not match"),  # non-ASCII must be refused, not crash
    ]:
        status, _, body = await agent.get(path, token)
        assert status == 401, token
        assert complaint in body, body
    status, _, _ = await agent.get(path, None, Authorization=f"Basic {TOKEN}")
    assert status == 401
    assert (await agent.get(path, TOKEN))[0] == 200
    assert (await agent.get(path, None, Authorization=f"bearer {TOKEN}"))[0] == 200


async def test_the_previous_token_is_accepted_for_a_while_after_a_change(agent: Agent) -> None:
    """A coordinator failover may issue a new token; peers learn it one list later."""
    path = f"/v1/peer/models/{KEY}/chunks"  # 404 once in: no board, but past the token check
    agent.give_token("token-one-0123456789")
    agent.give_token("token-two-0123456789")
    assert (await agent.get(path, "token-two-0123456789"))[0] == 404
    assert (await agent.get(path, "token-one-0123456789"))[0] == 404
    agent.give_token("token-three-0123456789")
    assert (await agent.get(path, "token-one-0123456789"))[0] == 401, "two changes back"
    assert (await agent.get(path, "token-two-0123456789"))[0] == 404
    agent.give_token(None)  # peer fetching turned off for the group
    assert (await agent.get(path, "token-three-0123456789"))[0] == 404, "still in its overlap"


def test_the_previous_token_expires_after_the_overlap() -> None:
    now = [1000.0]
    tokens = PeerTokens(overlap=60.0, clock=lambda: now[0])
    assert not tokens.known
    assert not tokens.accepts("anything")
    tokens.update("old-token")
    tokens.update("new-token")
    assert tokens.accepts("old-token")
    assert tokens.accepts("new-token")
    now[0] += 61
    assert not tokens.accepts("old-token")
    assert tokens.accepts("new-token")
    tokens.update(None)
    assert tokens.known, "the last token keeps its overlap"
    now[0] += 61
    assert not tokens.known
    assert not tokens.accepts("new-token")


# --- the upload budget --------------------------------------------------------------------------


async def test_uploads_beyond_the_slots_are_503_and_a_freed_slot_serves_again(
    tmp_path: Path,
) -> None:
    # 128K burst then 128K/s: the first upload lasts a second, holding the only slot.
    async with _agent(tmp_path, peer_upload_slots=1, peer_upload_bandwidth=128 * KiB) as agent:
        agent.give_token(TOKEN)
        served = _pulling(agent, tmp_path / "staging", {"w.bin": 256 * KiB}, chunk_size=128 * KiB)
        path = f"/v1/peer/models/{KEY}/files/0"
        headers = {"Authorization": f"Bearer {TOKEN}", "Range": f"bytes=0-{256 * KiB - 1}"}
        async with agent.http.get(f"{agent.url}{path}", headers=headers) as first:
            assert first.status == 206
            status, answer, body = await agent.piece(0, 0, 10)
            assert status == 503
            assert answer["Retry-After"] == "1"
            assert b"--peer-upload-slots" in body
            assert await first.read() == served.contents[0]
        status, _, body = await agent.piece(0, 0, 10)
        assert status == 206
        assert body == served.contents[0][:10]
        assert await agent.metric("modelcache_agent_peer_uploads") == 0


async def test_the_upload_cap_paces_the_bytes(tmp_path: Path) -> None:
    cap = 256 * KiB
    async with _agent(tmp_path, peer_upload_bandwidth=cap) as agent:
        agent.give_token(TOKEN)
        served = _pulling(agent, tmp_path / "staging", {"w.bin": 2 * cap}, chunk_size=cap)
        headers = {"Authorization": f"Bearer {TOKEN}", "Range": f"bytes=0-{2 * cap - 1}"}
        started = time.monotonic()
        arrivals: list[tuple[float, int]] = []
        received = b""
        url = f"{agent.url}/v1/peer/models/{KEY}/files/0"
        async with agent.http.get(url, headers=headers) as response:
            async for piece in response.content.iter_any():
                received += piece
                arrivals.append((time.monotonic() - started, len(received)))
        elapsed = time.monotonic() - started
    assert received == served.contents[0]
    # A second's worth goes at once (the limiter's bucket starts full), the rest at the cap:
    # one second, not much less (the cap holds) nor much more (it does not over-throttle).
    assert 0.8 <= elapsed < 2.5, elapsed
    early = max(done for at, done in arrivals if at < 0.5)
    assert early <= cap + 64 * KiB, arrivals


# --- boards of published models -----------------------------------------------------------------


def _publish_by_hand(cache_root: Path, sizes: dict[str, int], *, digests: bool) -> list[bytes]:
    """A model as an earlier run of the agent left it: files, and a manifest beside them."""
    dest = cache_root / "models" / KEY
    dest.mkdir(parents=True)
    contents = _write_files(dest, sizes)
    chunks = _digests(contents, CHUNK) if digests else [[] for _ in contents]
    manifest = Manifest(
        source="hf://acme/tiny-model",
        revision="abc",
        fingerprint="fingerprint-1",
        files=tuple(
            ManifestFile(name, size, None, tuple(c))
            for (name, size), c in zip(sizes.items(), chunks, strict=True)
        ),
        finished_at=datetime.now(UTC),
        chunk_size=CHUNK if digests else 0,
    )
    write_manifest(StagingPaths(dest).manifest, manifest)
    return contents


def _wanted(size: int) -> WantedModel:
    return WantedModel(KEY, "hf://acme/tiny-model", size, ("tiny",), "a100")


async def test_a_model_published_before_the_start_is_served_from_its_manifest(
    tmp_path: Path,
) -> None:
    sizes = {"weights.bin": 200 * KiB, "config.json": 300}
    contents = _publish_by_hand(tmp_path / "cache", sizes, digests=True)
    async with _agent(tmp_path) as agent:
        agent.give_token(TOKEN, (_wanted(sum(sizes.values())),))
        assert agent.state.keeper.statuses[KEY].state == "ModelDownloaded"
        chunk_map = await agent.chunks()
        assert chunk_map["complete"] is True
        assert chunk_map["records"] == [
            [f, c, digest]
            for f, file_digests in enumerate(_digests(contents, CHUNK))
            for c, digest in enumerate(file_digests)
        ]
        status, _, body = await agent.piece(0, 0, 200 * KiB)
        assert status == 206
        assert body == contents[0]

        # Gone from the list: peers are turned away before the files go.
        board = await agent.state.keeper.shelf.find(KEY)
        assert board is not None
        agent.give_token(TOKEN)
        for _ in range(100):
            if KEY not in agent.state.keeper.statuses:
                break
            await asyncio.sleep(0.05)
        assert board.closed
        assert not (tmp_path / "cache" / "models" / KEY).exists()
        status, _, _ = await agent.get(f"/v1/peer/models/{KEY}/chunks")
        assert status == 404


async def test_a_manifest_without_chunk_digests_serves_nothing(tmp_path: Path) -> None:
    sizes = {"weights.bin": 100 * KiB}
    _publish_by_hand(tmp_path / "cache", sizes, digests=False)
    async with _agent(tmp_path) as agent:
        agent.give_token(TOKEN, (_wanted(100 * KiB),))
        assert agent.state.keeper.statuses[KEY].state == "ModelDownloaded"
        status, _, _ = await agent.get(f"/v1/peer/models/{KEY}/chunks")
        assert status == 404


# --- metrics ------------------------------------------------------------------------------------


async def test_peer_metrics_count_bytes_and_outcomes(agent: Agent, tmp_path: Path) -> None:
    agent.give_token(TOKEN)
    _pulling(agent, tmp_path / "staging", {"w.bin": 200 * KiB}, held=lambda f, c: c != 2)
    await agent.chunks()
    await agent.piece(0, 0, CHUNK)
    await agent.piece(0, CHUNK, 2 * CHUNK)
    await agent.piece(0, 0, 200 * KiB)  # 416
    await agent.get(f"/v1/peer/models/{KEY}/chunks", "wrong-token")
    await agent.get(f"/v1/peer/models/{KEY}/files/0", None)

    requests = "modelcache_agent_peer_requests_total"
    assert await agent.metric(requests, route="chunks", code="200") == 1
    assert await agent.metric(requests, route="chunks", code="401") == 1
    assert await agent.metric(requests, route="file", code="206") == 2
    assert await agent.metric(requests, route="file", code="416") == 1
    assert await agent.metric(requests, route="file", code="401") == 1
    served = await agent.metric("modelcache_agent_peer_served_bytes_total", model=KEY)
    assert served == 2 * CHUNK
