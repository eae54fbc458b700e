"""A TCP forwarder for tests: a network path that can be cut, or a Kubernetes Service.

`TcpProxy(pick)` listens on a free port and forwards each new connection to the address `pick()`
names at that moment (None: refused, as a Service without ready endpoints). `sever()` cuts every
connection and refuses new ones, which to the other side looks like a process killed or a network
gone; `mend()` lets connections through again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

import aiohttp

Address = tuple[str, int]


def address_of(url: str) -> Address:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


class TcpProxy:
    def __init__(self, pick: Callable[[], Address | None]) -> None:
        self._pick = pick
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self.severed = False
        self.connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self.url

    def sever(self) -> None:
        self.severed = True
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, not a polite close
        self._writers.clear()

    def mend(self) -> None:
        self.severed = False

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, *self._handlers, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        target = None if self.severed else self._pick()
        if target is None:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, upstream_writer))
        pipes = [
            asyncio.create_task(_pipe(reader, upstream_writer), name="tcp-proxy-up"),
            asyncio.create_task(_pipe(upstream_reader, writer), name="tcp-proxy-down"),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for each in (writer, upstream_writer):
                self._writers.discard(each)
                each.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, RuntimeError):
        writer.transport.abort()


@contextlib.asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable path to one server."""
    target = address_of(url)
    proxy = TcpProxy(lambda: target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def service(backends: Callable[[], Iterable[str]]) -> AsyncIterator[TcpProxy]:
    """A Kubernetes Service: new connections go to a backend whose `/readyz` answered 200 at the
    last probe (every 50 ms, as endpoints follow readiness probes) among those `backends()`
    names at that probe (the pods its selector matches now); none ready: refused."""
    ready: list[Address] = []

    async def probe(http: aiohttp.ClientSession) -> None:
        while True:
            found = []
            for url in backends():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            found.append(address_of(url))
            ready[:] = found
            await asyncio.sleep(0.05)

    proxy = TcpProxy(lambda: ready[0] if ready else None)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        prober = asyncio.create_task(probe(http), name="service-endpoints")
        await proxy.start()
        try:
            yield proxy
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            await proxy.close()
