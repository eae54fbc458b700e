"""Ranged GETs from the origin on threads, each body read straight into the caller's buffer.

Why threads: on the 2-core development machine the asyncio path (a fresh bytes object for every
recv, the HTTP parser's copy, our copy into the page-aligned O_DIRECT buffer) kept the event loop
thread saturated at ~900 MB/s, while blocking reads release the GIL inside `recv_into` and land
in the buffer the write takes, with no copy in Python at all (a prototype: 1,250-1,300 MB/s with
every byte hashed). urllib3 keeps the pools, TLS, redirects and timeouts; this module adds only
what a pull needs on top: reads into a given buffer, and `abort`, which unblocks every thread
that is waiting on one of the client's sockets so a cancelled pull stops at once.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError
from urllib3.response import BaseHTTPResponse

MAX_REDIRECTS = 10

TRANSPORT_ERRORS = (HTTPError, http.client.HTTPException, OSError)
"""What a request or a body read raises when the connection, not the server's answer, failed
(resets, refused connects, timeouts, broken bodies, too many redirects)."""

_current = threading.local()
"""The client whose request this thread is making: its connections register with it."""


class Aborted(Exception):
    """The client was aborted while this thread was using it (the pull is being cancelled)."""


class _TrackedHTTPConnection(HTTPConnection):
    """A connection that tells its client which thread uses it, so `abort` can reach it."""

    def connect(self) -> None:
        self._track()
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._track()
        super().request(*args, **kwargs)

    def _track(self) -> None:
        client: BlockingClient | None = getattr(_current, "client", None)
        if client is not None:
            client._using(self)


class _TrackedHTTPSConnection(_TrackedHTTPConnection, HTTPSConnection):
    """The same for TLS: `super()` in the methods above reaches HTTPSConnection first."""


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class BlockingClient:
    """One pull's origin connections (at most `connections` open at once), used from threads."""

    def __init__(
        self,
        *,
        connections: int,
        connect_timeout: float,
        stall_timeout: float,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: whom to trust over TLS; the system's CAs by default."""
        self._pool = urllib3.PoolManager(
            num_pools=8,
            ssl_context=ssl_context,
            maxsize=connections,
            timeout=urllib3.Timeout(connect=connect_timeout, read=stall_timeout),
            # Redirects, and one resend of a request that a kept-alive connection lost before
            # any answer (the server closed it while idle); every other failure is the
            # caller's to retry, with its backoff.
            retries=urllib3.Retry(
                total=None,
                connect=0,
                read=1,
                status=0,
                other=0,
                redirect=MAX_REDIRECTS,
                raise_on_status=False,
            ),
        )
        self._pool.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
        self._headers = {"User-Agent": user_agent}
        self._lock = threading.Lock()
        self._in_use: dict[int, HTTPConnection] = {}
        """Thread id -> the connection that thread is using."""
        self.aborted = False

    def get(self, url: str, headers: Mapping[str, str]) -> BaseHTTPResponse:
        """GET `url`, following redirects; the body is left to read (see `read_into`), and the
        caller must `finish` the response."""
        _current.client = self
        try:
            return self._pool.request(
                "GET",
                url,
                headers={**self._headers, **headers},
                preload_content=False,
                decode_content=False,
            )
        except BaseException:
            self._forget()
            raise
        finally:
            _current.client = None

    @staticmethod
    def redirected_to(response: BaseHTTPResponse) -> str | None:
        """The absolute URL that answered, when the request was redirected (urllib3's own
        `geturl()` keeps a relative Location as it came)."""
        history = response.retries.history if response.retries is not None else ()
        if not history:
            return None
        last = history[-1]
        if last.url is None or last.redirect_location is None:
            return None
        return urljoin(last.url, last.redirect_location)

    def read_into(self, response: BaseHTTPResponse, buffer: memoryview) -> int:
        """Fill `buffer` from the body as far as it goes; less only where the body ends."""
        raw = getattr(response, "_fp", None)
        # http.client's readinto receives straight into `buffer`; urllib3's own copies through
        # a fresh bytes object (~10% of a pull's CPU). It is only the plain http.client response
        # underneath that is read, and only while urllib3 has not started on the body itself.
        read = (
            raw.readinto
            if isinstance(raw, http.client.HTTPResponse) and response.tell() == 0
            else response.readinto
        )
        filled = 0
        while filled < len(buffer):
            got = read(buffer[filled:])
            if self.aborted:
                raise Aborted
            if not got:
                break
            filled += got
        return filled

    def finish(self, response: BaseHTTPResponse, *, whole: bool) -> None:
        """Hand the connection back for the next request when its body was read to the end;
        close it otherwise (an unread rest would be taken for the next answer)."""
        try:
            if not whole:
                response.close()
            response.release_conn()
        finally:
            self._forget()

    def abort(self) -> None:
        """Make every thread using this client fail at once, now and from now on: its sockets
        are shut down, which ends a blocked connect, header wait or body read."""
        with self._lock:
            self.aborted = True
            connections = list(self._in_use.values())
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # closed already
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._pool.clear()

    def _using(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self.aborted:
                raise Aborted
            self._in_use[threading.get_ident()] = connection

    def _forget(self) -> None:
        with self._lock:
            self._in_use.pop(threading.get_ident(), None)
