"""Fixtures shared by the origin's tests: each module defines `origin`, these serve it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from modelcache.origin.server import Origin, start_origin


@pytest.fixture
async def url(origin: Origin) -> AsyncIterator[str]:
    runner, base = await start_origin(origin)
    try:
        yield base
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
