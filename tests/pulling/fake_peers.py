"""Peers for engine tests: real HTTP speaking `peer_wire`, serving real pulls' chunk boards, with
faults the real agent never has on purpose (corrupt bytes, lying digests, stalls, death)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from modelcache.contract.agent_wire import Peer
from modelcache.contract.peer_wire import ChunkRecord, chunk_map_to_raw
from modelcache.pulling.peering import ChunkBoard
from modelcache.pulling.planning import plan_chunks

TOKEN = "group-token"


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:] if data else data


@dataclass(eq=False)
class FakePeer:
    node: str
    boards: dict[str, ChunkBoard] = field(default_factory=dict)
    corrupt: bool = False
    """Flip the first byte of every range served; announce the true digests."""
    lie: bool = False
    """Flip it too, and announce the digests of the flipped chunks."""
    stall: bool = False
    """Send the first bytes of a range, then nothing."""
    url: str = ""
    ranges_served: int = 0
    bytes_served: int = 0

    @property
    def peer(self) -> Peer:
        return Peer(self.node, self.url)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/peer/models/{key}/chunks", self._chunks)
        app.router.add_get("/v1/peer/models/{key}/files/{index}", self._file)
        return app

    def _board(self, request: web.Request) -> ChunkBoard:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized
        board = self.boards.get(request.match_info["key"])
        if board is None or not board.ready:
            raise web.HTTPNotFound
        return board

    async def _chunks(self, request: web.Request) -> web.Response:
        board = self._board(request)
        position = int(request.query.get("from", "0"))
        try:
            async with asyncio.timeout(float(request.query.get("wait", "0"))):
                await board.wait_past(position)
        except TimeoutError:
            pass
        chunk_map = board.snapshot(position)
        if self.lie:
            records = [
                ChunkRecord(r.file_index, r.chunk_index, await self._flipped_digest(board, r))
                for r in chunk_map.records
            ]
            chunk_map = dataclasses.replace(chunk_map, records=tuple(records))
        return web.json_response(chunk_map_to_raw(chunk_map))

    async def _flipped_digest(self, board: ChunkBoard, record: ChunkRecord) -> str:
        plan = plan_chunks([f.size for f in board.files], board.chunk_size)
        chunk = plan[record.file_index][record.chunk_index]
        data = await asyncio.to_thread(_read, board, record.file_index, chunk.start, chunk.length)
        return hashlib.sha256(_flip(data)).hexdigest()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        board = self._board(request)
        index = int(request.match_info["index"])
        spec = request.headers["Range"].removeprefix("bytes=")
        start, last = (int(x) for x in spec.split("-"))
        if not board.holds(index, start, last + 1):
            raise web.HTTPRequestRangeNotSatisfiable
        data = await asyncio.to_thread(_read, board, index, start, last + 1 - start)
        if self.corrupt or self.lie:
            data = _flip(data)
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {start}-{last}/{board.files[index].size}",
                "Content-Length": str(len(data)),
            },
        )
        await response.prepare(request)
        self.ranges_served += 1
        if self.stall:
            await response.write(data[:1024])
            await asyncio.sleep(3600)
        await response.write(data)
        self.bytes_served += len(data)
        return response


def _read(board: ChunkBoard, index: int, start: int, length: int) -> bytes:
    with open(board.path_of(index), "rb") as f:
        f.seek(start)
        return f.read(length)


@asynccontextmanager
async def serving(peer: FakePeer) -> AsyncIterator[FakePeer]:
    runner = web.AppRunner(peer.app(), handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    peer.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield peer
    finally:
        await runner.cleanup()
