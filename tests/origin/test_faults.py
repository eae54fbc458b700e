"""Programmed faults, seen from a real aiohttp client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from modelcache.origin.faults import FaultKind, Faults
from modelcache.origin.repos import load_file
from modelcache.origin.server import Origin
from modelcache.origin.synthetic import write_synthetic_repo

SIZE = (2 << 20) + 77


@pytest.fixture
async def data(tmp_path: Path) -> Path:
    await asyncio.to_thread(write_synthetic_repo, tmp_path, {"a.bin": SIZE, "b.bin": 1000})
    return tmp_path


@pytest.fixture
async def origin(data: Path) -> Origin:
    origin = Origin()
    for name in ("a.bin", "b.bin"):
        origin.plain_files[name] = await asyncio.to_thread(load_file, name, data / name)
    return origin


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, BaseException | None]:
    """Status, the body bytes that arrived, and the error that ended the body early, if any."""
    received = bytearray()
    async with session.get(url, headers=headers) as response:
        try:
            async for chunk in response.content.iter_any():
                received += chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            return response.status, bytes(received), e
        return response.status, bytes(received), None


async def test_status_faults_answer_the_code_then_recover(
    url: str, origin: Origin, session: aiohttp.ClientSession, data: Path
) -> None:
    origin.faults.status(503, count=2)
    assert (await get(session, f"{url}/files/a.bin"))[0] == 503
    assert (await get(session, f"{url}/files/a.bin"))[0] == 503
    status, body, error = await get(session, f"{url}/files/a.bin")
    assert (status, error) == (200, None)
    assert body == (data / "a.bin").read_bytes()
    assert origin.stats.bytes_by_path == {"a.bin": SIZE}


async def test_429_carries_retry_after(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.faults.status(429, retry_after="7")
    async with session.get(f"{url}/files/a.bin") as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert len(await response.read()) < 200


async def test_reset_breaks_the_body(
    url: str, origin: Origin, session: aiohttp.ClientSession, data: Path
) -> None:
    origin.faults.reset(after_bytes=100_000)
    status, body, error = await get(session, f"{url}/files/a.bin")
    assert status == 200
    assert error is not None
    assert len(body) <= 100_000
    assert body == (data / "a.bin").read_bytes()[: len(body)]
    assert origin.stats.body_bytes_sent == 100_000


async def test_reset_before_any_byte(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.faults.reset(after_bytes=0)
    status, body, error = await get(session, f"{url}/files/a.bin")
    assert (status, body) == (200, b"")
    assert error is not None


async def test_truncate_ends_the_body_early_and_cleanly(
    url: str, origin: Origin, session: aiohttp.ClientSession, data: Path
) -> None:
    origin.faults.truncate(after_bytes=1_500_000)
    status, body, error = await get(session, f"{url}/files/a.bin")
    assert status == 200
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert body == (data / "a.bin").read_bytes()[:1_500_000]


async def test_flip_changes_one_byte_of_the_response(
    url: str, origin: Origin, session: aiohttp.ClientSession, data: Path
) -> None:
    expected = (data / "a.bin").read_bytes()
    origin.faults.flip(offset_in_response=10)
    _, body, error = await get(session, f"{url}/files/a.bin", {"Range": "bytes=1000-1999"})
    assert error is None
    differing = [
        i for i, (a, b) in enumerate(zip(body, expected[1000:2000], strict=True)) if a != b
    ]
    assert differing == [10]
    assert body[10] == expected[1010] ^ 0xFF


async def test_stall_pauses_then_finishes(
    url: str, origin: Origin, session: aiohttp.ClientSession, data: Path
) -> None:
    origin.faults.stall(after_bytes=5000, seconds=0.3)
    began = time.monotonic()
    _, body, error = await get(session, f"{url}/files/a.bin")
    assert time.monotonic() - began >= 0.3
    assert error is None
    assert body == (data / "a.bin").read_bytes()


async def test_ignore_range_sends_the_whole_file(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.faults.ignore_range()
    status, body, _ = await get(session, f"{url}/files/a.bin", {"Range": "bytes=10-19"})
    assert (status, len(body)) == (200, SIZE)
    assert origin.stats.ranges == [("a.bin", 10, 19)]  # what the client asked for
    status, body, _ = await get(session, f"{url}/files/a.bin", {"Range": "bytes=10-19"})
    assert (status, len(body)) == (206, 10)


async def test_rules_filter_by_path_and_go_in_order(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.faults.status(500, path="a.bin")
    origin.faults.status(502, count=None)
    assert (await get(session, f"{url}/files/b.bin"))[0] == 502
    assert (await get(session, f"{url}/files/a.bin"))[0] == 500
    assert (await get(session, f"{url}/files/a.bin"))[0] == 502
    assert (await get(session, f"{url}/files/a.bin"))[0] == 502
    (forever,) = origin.faults.rules
    assert (forever.hits, forever.remaining) == (3, None)

    origin.faults.clear()
    assert (await get(session, f"{url}/files/a.bin"))[0] == 200


async def test_head_requests_do_not_consume_faults(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.faults.status(503)
    async with session.head(f"{url}/files/a.bin") as response:
        assert response.status == 200
    assert (await get(session, f"{url}/files/a.bin"))[0] == 503


def test_fault_arguments_are_checked() -> None:
    faults = Faults()
    with pytest.raises(ValueError, match="count"):
        faults.reset(10, count=0)
    with pytest.raises(ValueError, match="400-599"):
        faults.status(200)
    with pytest.raises(ValueError, match=">= 0"):
        faults.truncate(-1)
    assert faults.rules == ()
    assert faults.ignore_range(count=None).kind is FaultKind.IGNORE_RANGE
