"""Turn a source URI into a `RemoteListing`: names, sizes, digests and data URLs.

Each source's client library is imported when that kind of source is first used: botocore and
huggingface_hub together cost a third of a second and tens of MB that an https pull never needs
(and aiohttp, for the https HEAD, a tenth of a second that an hf:// pull does not).
"""

from __future__ import annotations

from modelcache.contract.uris import HttpSource, HuggingFaceSource, ModelSource, S3Source
from modelcache.pulling.listing import RemoteListing
from modelcache.pulling.settings import PullSettings, SourceCredentials


async def list_source(
    source: ModelSource, uri: str, credentials: SourceCredentials, settings: PullSettings
) -> RemoteListing:
    """What `source` holds right now; `uri` is kept as the user wrote it."""
    match source:
        case HuggingFaceSource():
            from modelcache.pulling.sources.huggingface import list_huggingface

            return await list_huggingface(source, uri, credentials)
        case S3Source():
            from modelcache.pulling.sources.s3 import list_s3

            return await list_s3(source, uri, credentials)
        case HttpSource():
            from modelcache.pulling.sources.http import list_http

            return await list_http(source, uri, settings)
