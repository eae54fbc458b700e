"""The webhooks' HTTPS listener: 503 until ready, a certificate waited for when missing and picked
up again when renewed in place (new connections see the new one)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from modelcache.coordinator.admitting import WebhookServer, until_ready
from modelcache.coordinator.webhook_settings import WebhookSettings
from modelcache.coordinator.webhooks import VALIDATE_CACHE_PATH, build_webhook_app
from tests.coordinator.test_binding import cluster


def write_cert(ca: trustme.CA, folder: Path) -> None:
    issued = ca.issue_cert("127.0.0.1")
    (folder / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    (folder / "tls.key").write_bytes(issued.private_key_pem.bytes())


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def status_of(url: str, ca: trustme.CA) -> int:
    """A fresh connection (a new handshake) trusting only `ca`."""
    connector = aiohttp.TCPConnector(ssl=trusting(ca), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url + VALIDATE_CACHE_PATH, data=b"{}") as response,
    ):
        return response.status


@pytest.fixture
def ready() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def server(tmp_path: Path, ready: asyncio.Event) -> AsyncIterator[WebhookServer]:
    app = build_webhook_app(cluster())
    app.middlewares.append(until_ready(ready))
    settings = WebhookSettings("127.0.0.1", 0, tmp_path / "tls.crt", tmp_path / "tls.key", 0.05)
    served = WebhookServer(settings, app)
    try:
        yield served
    finally:
        await served.stop()


async def test_answers_503_until_ready_then_decides(
    server: WebhookServer, ready: asyncio.Event, tmp_path: Path
) -> None:
    ca = trustme.CA()
    write_cert(ca, tmp_path)
    await server.start()
    assert server.url is not None
    assert await status_of(server.url, ca) == 503
    ready.set()
    assert await status_of(server.url, ca) == 400  # "{}" is no AdmissionReview: it was read


async def test_a_missing_certificate_is_waited_for_and_a_renewed_one_served(
    server: WebhookServer, ready: asyncio.Event, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready.set()
    await server.start()
    assert server.url is None
    assert "no webhook certificate at" in caplog.text
    first, renewed = trustme.CA(), trustme.CA()
    async with asyncio.TaskGroup() as group:
        keeping = group.create_task(server.keep_certificates())
        write_cert(first, tmp_path)
        async with asyncio.timeout(5):
            while server.url is None:
                await asyncio.sleep(0.02)
        assert await status_of(server.url, first) == 400

        write_cert(renewed, tmp_path)
        async with asyncio.timeout(5):
            while True:
                try:
                    if await status_of(server.url, renewed) == 400:
                        break
                except aiohttp.ClientConnectorCertificateError:
                    await asyncio.sleep(0.02)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await status_of(server.url, first)

        (tmp_path / "tls.key").write_bytes(b"half written")  # a broken pair is not taken
        await asyncio.sleep(0.2)
        assert await status_of(server.url, renewed) == 400
        assert "does not load" in caplog.text
        keeping.cancel()
