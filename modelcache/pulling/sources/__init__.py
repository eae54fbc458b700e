"""Turn a source URI into a `RemoteListing`: names, sizes, digests and data URLs."""

from __future__ import annotations

import aiohttp

from modelcache.contract.uris import HttpSource, HuggingFaceSource, ModelSource, S3Source
from modelcache.pulling.listing import RemoteListing
from modelcache.pulling.settings import SourceCredentials
from modelcache.pulling.sources.http import list_http
from modelcache.pulling.sources.huggingface import list_huggingface
from modelcache.pulling.sources.s3 import list_s3


async def list_source(
    source: ModelSource, uri: str, credentials: SourceCredentials, session: aiohttp.ClientSession
) -> RemoteListing:
    """What `source` holds right now; `uri` is kept as the user wrote it."""
    match source:
        case HuggingFaceSource():
            return await list_huggingface(source, uri, credentials)
        case S3Source():
            return await list_s3(source, uri, credentials)
        case HttpSource():
            return await list_http(source, uri, session)
