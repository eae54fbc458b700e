"""The two peer routes of `peer_wire` on the agent's HTTP server: chunk maps and chunk bytes.

Only peers of this node's group get in: they show the group's token (`PeerTokens`). A peer reads
only verified chunks, from the board of a running pull or of a published model (`Shelf`), so what
it copies is what the origin sent, digest for digest. Uploads share one node-wide budget: at most
`slots` run at once (a peer asked beyond that goes to another peer or the origin: 503 with
Retry-After), and their bytes together stay under `bandwidth`, so serving peers never starves
this node's own pulls or its serving pods of network.

Bytes are read with `os.pread` on the server's own threads, a block at a time, the next block
read while the current one is sent. `sendfile` would spare the two copies (measured: about a third
of the CPU per byte, at the same throughput; README, "Peer serving"), but the kernel reads cold
pages inside the call, on the event-loop thread that also runs this node's pulls, and a staging
file written with O_DIRECT is cold; threads keep the loop free and the cap exact per block.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from aiolimiter import AsyncLimiter

from modelcache.agent.metrics import AgentMetrics
from modelcache.agent.shelf import Shelf
from modelcache.contract.peer_wire import CHUNKS_PATH, FILE_PATH, chunk_map_to_raw
from modelcache.pulling.peering import ChunkBoard

log = logging.getLogger(__name__)
MAX_WAIT: Final = 10.0
"""Longest long poll on a chunk map, whatever the peer asks: a node going away answers soon."""
BLOCK: Final = 1 << 20
"""Bytes read and sent per step: large enough that thread hops cost little, small enough that
the cap paces smoothly and a slow peer holds little memory."""
_KEY = re.compile(r"^[0-9a-f]{16}$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
_OUTCOME: Final = "modelcache.peer_outcome"
"""Request-scoped note of a response cut short, for the request counter."""


@dataclass(frozen=True, slots=True)
class UploadLimits:
    slots: int = 8
    """Uploads to peers at once; beyond that peers are told to go elsewhere."""
    bandwidth: int | None = None
    """Bytes per second over every upload of the node together; None for no cap."""


class UploadGate:
    """The node's upload budget: slots taken without waiting, bytes paced by one limiter."""

    def __init__(self, limits: UploadLimits) -> None:
        self.slots = limits.slots
        self.busy = 0
        rate = limits.bandwidth
        self._limiter = AsyncLimiter(rate, 1.0) if rate else None
        # The limiter refuses a step larger than a second's worth: a small cap means small steps.
        self.block = min(BLOCK, rate) if rate else BLOCK

    def enter(self) -> bool:
        if self.busy >= self.slots:
            return False
        self.busy += 1
        return True

    def leave(self) -> None:
        self.busy -= 1

    async def throttle(self, amount: int) -> None:
        if self._limiter is not None:
            await self._limiter.acquire(amount)


class PeerServer:
    def __init__(
        self, shelf: Shelf, node: str, limits: UploadLimits, metrics: AgentMetrics
    ) -> None:
        self.shelf = shelf
        self.node = node
        self.gate = UploadGate(limits)
        self.metrics = metrics
        # Its own threads: peer reads never queue behind a pull's hashing on the default
        # executor, and a read still running when its request ends can be waited for.
        self.readers = ThreadPoolExecutor(limits.slots, thread_name_prefix="peer-read")

    def close(self) -> None:
        self.readers.shutdown(wait=False, cancel_futures=True)

    def refusal(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries this node group's current (or just replaced) token."""
        tokens = self.shelf.tokens
        if not tokens.known:
            return _refuse(
                f"node {self.node} has no peer token yet (it takes its node group's token from "
                "the coordinator's desired list): fetch from another peer or the origin, and ask "
                "this node again later"
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _refuse(
                "peer requests need 'Authorization: Bearer <peerToken>' with the node group's "
                "token from the desired list"
            )
        if not tokens.accepts(token.strip()):
            return _refuse(
                f"the peer token does not match node {self.node}'s node group: send the token of "
                "your latest desired list (only nodes of the same group fetch from each other)"
            )
        return None

    def missing(self, key: str) -> web.Response:
        return _error(
            404,
            f"node {self.node} neither holds nor pulls model {key} (or keeps no chunk digests "
            "for it): fetch it from another peer or the origin",
        )

    async def board(self, key: str) -> ChunkBoard | None:
        return await self.shelf.find(key) if _KEY.match(key) else None


PEER_SERVER = web.AppKey("peer_server", PeerServer)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_peer_routes(app: web.Application, server: PeerServer) -> None:
    app[PEER_SERVER] = server
    app.router.add_get(CHUNKS_PATH, _counted("chunks", chunk_map), allow_head=False)
    app.router.add_get(FILE_PATH, _counted("file", file_range), allow_head=False)


def _counted(route: str, handler: Handler) -> Handler:
    async def counted(request: web.Request) -> web.StreamResponse:
        requests = request.app[PEER_SERVER].metrics.peer_requests
        try:
            response = await handler(request)
        except ConnectionError:  # the peer went away while we wrote
            requests.labels(route=route, code="aborted").inc()
            raise
        requests.labels(route=route, code=request.get(_OUTCOME, str(response.status))).inc()
        return response

    return counted


async def chunk_map(request: web.Request) -> web.StreamResponse:
    """``GET .../chunks?from=N&wait=S``: the board's records from N on, long-polled."""
    server = request.app[PEER_SERVER]
    refused = server.refusal(request)
    if refused is not None:
        return refused
    key = request.match_info["key"]
    try:
        position = int(request.query.get("from", "0"))
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        position, wait = -1, 0.0
    if position < 0 or not math.isfinite(wait) or wait < 0:
        return _error(400, "'from' must be a non-negative integer and 'wait' a number of seconds")
    board = await server.board(key)
    if board is None:
        return server.missing(key)
    try:
        async with asyncio.timeout(min(wait, MAX_WAIT)):
            await board.wait_past(position)
    except TimeoutError:
        pass  # nothing new: the same position again, the peer asks once more
    if board.closed:  # the pull stopped or the model went away while the peer waited
        return server.missing(key)
    return _json(chunk_map_to_raw(board.snapshot(position)))


async def file_range(request: web.Request) -> web.StreamResponse:
    """``GET .../files/{index}`` with ``Range: bytes=A-B``: bytes of held chunks only."""
    server = request.app[PEER_SERVER]
    refused = server.refusal(request)
    if refused is not None:
        return refused
    key, index_text = request.match_info["key"], request.match_info["index"]
    board = await server.board(key)
    if board is None:
        return server.missing(key)
    index = int(index_text) if index_text.isdecimal() else -1
    if not 0 <= index < len(board.files):
        return _error(404, f"model {key} has no file {index_text} (it has {len(board.files)})")
    size = board.files[index].size
    wanted = _RANGE.match(request.headers.get("Range", ""))
    start, end = (int(wanted[1]), int(wanted[2]) + 1) if wanted else (0, 0)
    if not board.holds(index, start, end):
        return _error(
            416,
            f"{request.headers.get('Range', 'no Range header')!r} of file {index} of model {key} "
            f"is not one range inside chunks node {server.node} holds: read its chunk map and "
            "ask for 'Range: bytes=A-B' within held chunks",
            headers={"Content-Range": f"bytes */{size}"},
        )
    gate = server.gate
    if not gate.enter():
        return _error(
            503,
            f"node {server.node} is sending to {gate.slots} peers already (--peer-upload-slots): "
            "fetch from another peer or retry after a second",
            headers={"Retry-After": "1"},
        )
    server.metrics.peer_uploads.inc()
    try:
        return await _upload(request, server, key, board, index, start, end)
    finally:
        server.metrics.peer_uploads.dec()
        gate.leave()


async def _upload(
    request: web.Request,
    server: PeerServer,
    key: str,
    board: ChunkBoard,
    index: int,
    start: int,
    end: int,
) -> web.StreamResponse:
    path = board.path_of(index)
    try:
        fd = await _open(server.readers, path, end)
    except OSError as e:
        # Publishing renames the staging folder under the request, or the model is being
        # removed: the bytes are elsewhere now (or gone), the peer asks again or elsewhere.
        log.info("peer read of %s: %s", path, e)
        return _error(
            503,
            f"file {index} of model {key} moved on node {server.node} while it was asked (just "
            "published or removed): retry, or fetch from another peer",
            headers={"Retry-After": "1"},
        )
    served = server.metrics.peer_served_bytes.labels(model=key)
    reading: Future[bytes] | None = None
    """The read on a thread, if any: the descriptor must outlive it."""
    try:
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end - 1}/{board.files[index].size}",
            },
        )
        response.content_length = end - start
        await response.prepare(request)
        step = server.gate.block
        following = reading = server.readers.submit(os.pread, fd, min(step, end - start), start)
        offset = start
        while offset < end:
            try:
                data = await asyncio.wrap_future(following)
            except OSError as e:
                data, problem = b"", str(e)
            else:
                problem = "the file is shorter than its board says"
            reading = None
            if not data:
                # A disk error, or a file truncated behind the agent's back: cut the answer
                # short (the connection closes), so the peer sees an incomplete body, never
                # wrong bytes, and fetches the chunk elsewhere.
                log.warning("serving %s to a peer at byte %d: %s", path, offset, problem)
                response.force_close()
                request[_OUTCOME] = "aborted"
                return response
            offset += len(data)
            if offset < end:  # read ahead while this block goes out
                following = reading = server.readers.submit(
                    os.pread, fd, min(step, end - offset), offset
                )
            await server.gate.throttle(len(data))
            await response.write(data)
            served.inc(len(data))
        await response.write_eof()
        return response
    except ConnectionError:
        # The peer gave up on this chunk (its timeout) or went away: nothing to answer.
        request[_OUTCOME] = "aborted"
        return response
    finally:
        if reading is not None and not reading.done() and not reading.cancel():
            # A read runs on a thread: close the descriptor once it ends, never under it.
            reading.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)


async def _open(readers: ThreadPoolExecutor, path: os.PathLike[str], end: int) -> int:
    opening = readers.submit(_open_holding, path, end)
    try:
        return await asyncio.wrap_future(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)  # no descriptor left behind by a cancel
        raise


def _close_opened(opening: Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())


def _open_holding(path: os.PathLike[str], end: int) -> int:
    """A descriptor of the file when it has at least `end` bytes (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    if size < end:
        os.close(fd)
        raise FileNotFoundError(f"{os.fspath(path)} is shorter than its board says")
    return fd


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"error": message}, status)
    response.headers.update(headers or {})
    return response


def _refuse(message: str) -> web.Response:
    return _error(401, message, {"WWW-Authenticate": 'Bearer realm="modelcache-peers"'})
