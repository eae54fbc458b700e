"""The fetch threads' HTTP client against a real TLS server: redirects, reads into a given
buffer, connections reused, and `abort` ending a read that would otherwise block."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from modelcache.pulling.blocking_http import Aborted, BlockingClient

BODY = os.urandom(3 * 1024 * 1024 + 123)


@dataclass
class Server:
    url: str
    ca: trustme.CA
    peers: set[int] = field(default_factory=set)
    """Client ports seen: one per connection the client opened."""
    stall: asyncio.Event = field(default_factory=asyncio.Event)

    def client(self) -> BlockingClient:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return BlockingClient(
            connections=2,
            connect_timeout=5,
            stall_timeout=30,
            user_agent="modelcache-test",
            ssl_context=context,
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    state = Server("", ca)

    async def blob(request: web.Request) -> web.StreamResponse:
        assert request.headers["User-Agent"] == "modelcache-test"
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.peers.add(peer[1] if peer else -1)
        return web.Response(body=BODY)

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/blob")  # relative, as RFC 9110 allows

    async def stalling(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[:1000])
        await state.stall.wait()  # until the test ends
        return response

    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_get("/moved", moved)
    app.router.add_get("/stalling", stalling)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    state.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        state.stall.set()
        await runner.cleanup()


def _get_all(client: BlockingClient, url: str) -> tuple[bytes, str | None]:
    response = client.get(url, {})
    buffer = memoryview(bytearray(len(BODY) + 10))
    got = client.read_into(response, buffer)
    client.finish(response, whole=True)
    return bytes(buffer[:got]), client.redirected_to(response)


async def test_tls_redirects_and_bodies_read_into_the_buffer(server: Server) -> None:
    client = server.client()
    try:
        body, final = await asyncio.to_thread(_get_all, client, f"{server.url}/moved")
        assert body == BODY
        assert final == f"{server.url}/blob"
        again, final = await asyncio.to_thread(_get_all, client, f"{server.url}/blob")
        assert again == BODY
        assert final is None
    finally:
        client.close()
    assert len(server.peers) == 1  # the connection went back to the pool and was used again


async def test_abort_ends_a_read_the_server_stalls(server: Server) -> None:
    client = server.client()

    def read_stalled() -> int:
        response = client.get(f"{server.url}/stalling", {})
        try:
            return client.read_into(response, memoryview(bytearray(len(BODY))))
        finally:
            client.finish(response, whole=False)

    try:
        reading = asyncio.ensure_future(asyncio.to_thread(read_stalled))
        await asyncio.sleep(0.3)
        assert not reading.done()  # blocked in the body, 1,000 bytes in
        started = time.monotonic()
        client.abort()
        with pytest.raises(Aborted):
            await reading
        assert time.monotonic() - started < 2.0
        with pytest.raises(Aborted):  # and nothing new starts on an aborted client
            await asyncio.to_thread(client.get, f"{server.url}/blob", {})
    finally:
        client.close()
