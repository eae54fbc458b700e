"""S3 (or any S3-compatible store): every object under a prefix, listed and signed by botocore.

Each file's data URL is a SigV4 pre-signed GET made by botocore, so the engine's one ranged-GET
path serves S3 too and no signing is written by hand. Credentials come from botocore's chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, web identity, instance profile).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from modelcache.contract.errors import (
    AccessDeniedError,
    ModelCacheError,
    PermanentError,
    SourceNotFoundError,
    TemporaryError,
)
from modelcache.contract.uris import S3Source
from modelcache.pulling.listing import Digest, RemoteFile, RemoteListing
from modelcache.pulling.settings import SourceCredentials

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

URL_LIFETIME_SECONDS = 12 * 3600
AUTH_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "credentials), or give the pod a role that may s3:GetObject and s3:ListBucket"
)
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
_MISSING = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


async def list_s3(source: S3Source, uri: str, credentials: SourceCredentials) -> RemoteListing:
    try:
        return await asyncio.to_thread(_list_blocking, source, uri, credentials)
    except ModelCacheError:
        raise
    except NoCredentialsError as e:
        raise AccessDeniedError(f"{uri}: no AWS credentials found: {AUTH_HINT}") from e
    except EndpointConnectionError as e:
        raise TemporaryError(f"{uri}: cannot reach the S3 endpoint: {e}") from e
    except ClientError as e:
        raise _client_error(uri, e) from e
    except BotoCoreError as e:
        raise TemporaryError(f"{uri}: S3 request failed: {e}") from e


def _client(credentials: SourceCredentials) -> S3Client:
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=credentials.aws_endpoint_url,
        region_name=credentials.aws_region or "us-east-1",
        config=Config(signature_version="s3v4", retries={"mode": "standard"}),
    )
    return cast("S3Client", client)


def _list_blocking(source: S3Source, uri: str, credentials: SourceCredentials) -> RemoteListing:
    client = _client(credentials)
    folder = (
        source.prefix if not source.prefix or source.prefix.endswith("/") else source.prefix + "/"
    )
    objects: list[tuple[str, int, str]] = []  # (relative path, size, etag)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=source.bucket, Prefix=folder):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/") and obj["Size"] == 0:
                continue  # a "folder" marker object, not a file
            objects.append((key[len(folder) :], obj["Size"], obj["ETag"].strip('"')))
    if not objects and source.prefix and not source.prefix.endswith("/"):
        # The prefix may name one object rather than a folder.
        head = client.head_object(Bucket=source.bucket, Key=source.prefix)
        name = source.prefix.rsplit("/", 1)[-1]
        objects.append((name, head["ContentLength"], head["ETag"].strip('"')))
        folder = source.prefix[: -len(name)]
    if not objects:
        raise SourceNotFoundError(
            f"{uri}: no objects under s3://{source.bucket}/{folder}: check the bucket and prefix"
        )
    objects.sort()
    files = tuple(
        RemoteFile(
            path=path,
            size=size,
            url=client.generate_presigned_url(
                "get_object",
                Params={"Bucket": source.bucket, "Key": folder + path},
                ExpiresIn=URL_LIFETIME_SECONDS,
            ),
            # A single-part upload's ETag is the md5 of the object; multipart ETags carry "-N".
            digest=Digest("md5", etag) if _MD5_ETAG.match(etag) else None,
            etag=etag,
        )
        for path, size, etag in objects
    )
    revision = hashlib.sha256(repr(objects).encode()).hexdigest()[:40]
    return RemoteListing(source=uri, revision=revision, files=files)


def _client_error(uri: str, error: ClientError) -> ModelCacheError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    rid = error.response.get("ResponseMetadata", {}).get("RequestId")
    suffix = f" (request id {rid})" if rid else ""
    if code in _DENIED or status in (401, 403):
        return AccessDeniedError(f"{uri}: access denied ({code}){suffix}: {AUTH_HINT}")
    if code in _MISSING or status == 404:
        return SourceNotFoundError(f"{uri}: not found ({code}){suffix}: check bucket and prefix")
    if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
        return TemporaryError(f"{uri}: S3 answered {code} (HTTP {status}){suffix}")
    return PermanentError(f"{uri}: S3 answered {code} (HTTP {status}){suffix}")
