"""A single file at an http(s) URL."""

from __future__ import annotations

import aiohttp

from modelcache.contract.errors import PermanentError, TemporaryError
from modelcache.contract.uris import HttpSource
from modelcache.pulling.httperrors import error_for_status
from modelcache.pulling.listing import RemoteFile, RemoteListing
from modelcache.pulling.settings import PullSettings

AUTH_HINT = "the URL needs credentials modelcache cannot send; use a pre-signed URL"


async def list_http(source: HttpSource, uri: str, settings: PullSettings) -> RemoteListing:
    """Size and version of the file from a HEAD (or a one-byte ranged GET if HEAD is refused)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout, sock_read=settings.stall_timeout
    )
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, headers={"User-Agent": "modelcache"}
    ) as session:
        return await _list(source, uri, session)


async def _list(source: HttpSource, uri: str, session: aiohttp.ClientSession) -> RemoteListing:
    what = uri
    try:
        async with session.head(source.url, allow_redirects=True) as resp:
            status, headers = resp.status, resp.headers
            size = _int_or_none(headers.get("Content-Length")) if status == 200 else None
        if status in (405, 501) or (status == 200 and size is None):
            async with session.get(source.url, headers={"Range": "bytes=0-0"}) as resp:
                status, headers = resp.status, resp.headers
                size = _size_from_content_range(headers.get("Content-Range"))
                if status == 200:
                    size = _int_or_none(headers.get("Content-Length"))
                status = 200 if status == 206 else status
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TemporaryError(f"{what}: cannot reach the server: {e}") from e
    if status != 200:
        raise error_for_status(status, headers, what=what, auth_hint=AUTH_HINT)
    if size is None:
        raise PermanentError(
            f"{what}: the server does not say how large the file is (no Content-Length); "
            "modelcache needs the size to plan and verify the download"
        )
    etag = headers.get("ETag") or headers.get("Last-Modified")
    revision = etag or f"size:{size}"
    file = RemoteFile(path=source.file_name, size=size, url=source.url, etag=etag)
    return RemoteListing(source=uri, revision=revision, files=(file,))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _size_from_content_range(value: str | None) -> int | None:
    # "bytes 0-0/12345"
    if not value or "/" not in value:
        return None
    return _int_or_none(value.rsplit("/", 1)[1])
