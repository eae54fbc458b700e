"""Sending file bytes: ranges, pacing, and the programmed faults that break a transfer.

Bodies are read from disk in a worker thread, one block at a time, so memory stays at a few
MiB whatever the file size and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiolimiter import AsyncLimiter

from .faults import FaultKind, FaultRule, Faults, OriginStats
from .repos import ServedFile

_BLOCK = 1 << 20
_PACED_BLOCK = 64 << 10
_FLUSH_WAIT_SECONDS = 2.0
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in `Content-Range`

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiableError(Exception):
    """The `Range` asks for bytes past the end of the file: the answer is 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None to send the whole file.

    Malformed and multi-range headers are ignored (None), as RFC 9110 allows; a well-formed
    range that starts past the end raises `RangeNotSatisfiableError`.
    """
    if header is None:
        return None
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # bytes=-SUFFIX: the last SUFFIX bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(header)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiableError(header)
    return ByteRange(start, min(end, size - 1))


@dataclass(frozen=True)
class Delivery:
    """How one data request is answered: where faults, counters and pacing come from."""

    faults: Faults
    stats: OriginStats
    rate: int | None  # bytes per second per response, None: as fast as possible
    total: AsyncLimiter | None = None
    """Bytes per second over all responses (an origin behind a thin pipe), shared."""


async def serve_file(
    request: web.Request,
    served: ServedFile,
    headers: Mapping[str, str],
    delivery: Delivery,
) -> web.StreamResponse:
    """Answer HEAD or GET for `served`, honouring one `Range` and any fault due for it."""
    base_headers = {
        **headers,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    fault = delivery.faults.take(served.path) if request.method == "GET" else None
    if fault is not None and fault.kind is FaultKind.STATUS:
        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return web.json_response(
            {"error": f"injected fault: HTTP {fault.status} for {served.path}"},
            status=fault.status,
            headers=extra,
        )
    try:
        wanted = parse_range(request.headers.get("Range"), served.size)
    except RangeNotSatisfiableError:
        return web.Response(
            status=416,
            headers={**base_headers, "Content-Range": f"bytes */{served.size}"},
        )
    if wanted is not None and request.method == "GET":
        delivery.stats.ranges.append((served.path, wanted.start, wanted.end))
    if fault is not None and fault.kind is FaultKind.IGNORE_RANGE:
        wanted = None
    if wanted is None:
        status, start, length = 200, 0, served.size
    else:
        status, start, length = 206, wanted.start, wanted.length
        base_headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{served.size}"

    response = web.StreamResponse(status=status, headers=base_headers)
    response.content_length = length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        await response.write(b"")  # the status line and headers leave now, even if 0 bytes follow
        if fault is None and length:
            await _send_file(request, served, start, length, delivery)
        else:
            await _send_body(request, response, served, start, length, fault, delivery)
    except ConnectionError:
        pass  # the client went away (or a fault closed the connection): nothing left to answer
    return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    served: ServedFile,
    start: int,
    length: int,
    fault: FaultRule | None,
    delivery: Delivery,
) -> None:
    cut: int | None = None
    flip_at: int | None = None
    if fault is not None and fault.kind in (FaultKind.RESET, FaultKind.TRUNCATE, FaultKind.STALL):
        cut = min(fault.after_bytes, length)
    elif fault is not None and fault.kind is FaultKind.FLIP:
        flip_at = fault.offset
    block = _PACED_BLOCK if delivery.rate else _BLOCK
    loop = asyncio.get_running_loop()
    began = loop.time()
    sent = 0
    while True:
        if cut is not None and sent >= cut:
            assert fault is not None
            if fault.kind is FaultKind.STALL:
                await asyncio.sleep(fault.seconds)
                cut = None
            elif fault.kind is FaultKind.RESET:
                await _reset_connection(request)
                return
            else:
                _close_connection(request)
                return
        if sent >= length:
            return
        wanted = min(block, length - sent, (cut - sent) if cut is not None else length)
        data: bytes | bytearray = await asyncio.to_thread(
            _read_block, served.disk_path, start + sent, wanted
        )
        if not data:
            # The file shrank under us: never pad, never pretend the body is complete.
            await _reset_connection(request)
            return
        if flip_at is not None and sent <= flip_at < sent + len(data):
            data = bytearray(data)
            data[flip_at - sent] ^= 0xFF
        if delivery.total is not None:
            await delivery.total.acquire(len(data))
        await response.write(data)
        sent += len(data)
        delivery.stats.count_body(served.path, len(data))
        if delivery.rate:
            ahead = sent / delivery.rate - (loop.time() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)


_PACED_SENDFILE_BLOCK = 1 << 20
_SHARED_PIPE_BLOCK = 256 << 10


async def _send_file(
    request: web.Request, served: ServedFile, start: int, length: int, delivery: Delivery
) -> None:
    """The plain case, zero-copy: the kernel moves page-cache pages straight to the socket.

    A real Hub or CDN costs the client machine no CPU; on a shared benchmark box a copying
    origin would tax every client it is compared against."""
    transport = request.transport
    if transport is None:
        return
    loop = asyncio.get_running_loop()
    # Paced: slices of a size that keeps the rate smooth; unpaced: all at once.
    block = _PACED_SENDFILE_BLOCK if delivery.rate else length
    if delivery.total is not None:
        block = min(block, _SHARED_PIPE_BLOCK)
    began = loop.time()
    sent = 0
    # open/close inline, not on a thread: a handler cancelled (client gone) between a threaded
    # open and the `try` would leak the file. Opening a local file does not wait on the disk.
    with served.disk_path.open("rb") as f:
        while sent < length:
            count = min(block, length - sent)
            if delivery.rate:
                # Wait first, so no slice, the first included, arrives ahead of the rate.
                ahead = (sent + count) / delivery.rate - (loop.time() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if delivery.total is not None:
                await delivery.total.acquire(count)
            # Counted when handed to the kernel: a client in the same event loop may have read
            # the whole body before this coroutine runs again.
            delivery.stats.count_body(served.path, count)
            await loop.sendfile(transport, f, start + sent, count)
            sent += count


def _read_block(path: Path, offset: int, size: int) -> bytes:
    """One block, opened and closed in the worker thread.

    A cancelled request cannot stop a read already running in a thread; if the loop closed a
    shared descriptor meanwhile, the read could land on whatever file reused its number.
    """
    with path.open("rb", buffering=0) as f:
        f.seek(offset)
        return f.read(size)


async def _reset_connection(request: web.Request) -> None:
    """Let the bytes already written reach the client, then abort the connection with RST."""
    transport = request.transport
    if transport is None:
        return
    try:
        async with asyncio.timeout(_FLUSH_WAIT_SECONDS):
            # asyncio signals "buffer empty" to no one but the protocol (aiohttp's): poll.
            while transport.get_write_buffer_size() > 0 and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.002)
    except TimeoutError:
        pass  # the client stopped reading; reset anyway, dropping what it never took
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, so the client sees "connection reset".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _close_connection(request: web.Request) -> None:
    """Flush what was written, then FIN: the body ends early but the connection ends cleanly."""
    transport = request.transport
    if transport is not None:
        transport.close()
