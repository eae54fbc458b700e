"""s3:// against moto's real S3 server on 127.0.0.1: listing, signed ranged GETs, md5 ETags."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from modelcache.contract.errors import SourceNotFoundError
from modelcache.pulling import PullSettings, SourceCredentials, pull

SETTINGS = PullSettings(
    chunk_size=256 * 1024, concurrency=4, min_free_bytes=0, retry_base_delay=0.01
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _client(endpoint: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: None, request: pytest.FixtureRequest) -> dict[str, bytes]:
    client = _client(s3_endpoint)
    name = "models-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    client.create_bucket(Bucket=name)
    objects = {
        "llama/config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "llama/model.safetensors": os.urandom(1_300_000),
        "llama/sub/tokenizer.model": os.urandom(70_000),
        "llama/": b"",  # a folder marker, not a file
        "other/ignored.bin": b"x" * 10,
    }
    for key, body in objects.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return {"bucket": name.encode(), **objects}


def creds(endpoint: str) -> SourceCredentials:
    return SourceCredentials(aws_endpoint_url=endpoint, aws_region="us-east-1")


async def test_pulls_every_object_under_the_prefix(
    s3_endpoint: str, bucket: dict[str, bytes], tmp_path: Path
) -> None:
    name = bucket["bucket"].decode()
    dest = tmp_path / "model"
    result = await pull(
        f"s3://{name}/llama", dest, settings=SETTINGS, credentials=creds(s3_endpoint)
    )
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "config.json",
        "model.safetensors",
        "sub/tokenizer.model",
    ]
    assert (dest / "model.safetensors").read_bytes() == bucket["llama/model.safetensors"]
    assert (dest / "sub/tokenizer.model").read_bytes() == bucket["llama/sub/tokenizer.model"]
    assert result.fetched_bytes == result.total_bytes == 1_300_000 + 70_000 + 39

    again = await pull(
        f"s3://{name}/llama/", dest, settings=SETTINGS, credentials=creds(s3_endpoint)
    )
    assert again.up_to_date is False  # a different URI string is a different source identity
    again = await pull(
        f"s3://{name}/llama/", dest, settings=SETTINGS, credentials=creds(s3_endpoint)
    )
    assert again.up_to_date
    assert again.fetched_bytes == 0


async def test_single_object_prefix(
    s3_endpoint: str, bucket: dict[str, bytes], tmp_path: Path
) -> None:
    name = bucket["bucket"].decode()
    dest = tmp_path / "one"
    await pull(
        f"s3://{name}/llama/config.json", dest, settings=SETTINGS, credentials=creds(s3_endpoint)
    )
    assert (dest / "config.json").read_bytes() == bucket["llama/config.json"]


async def test_md5_etags_are_checked_and_multipart_etags_are_not_mistaken_for_md5(
    s3_endpoint: str, bucket: dict[str, bytes], tmp_path: Path
) -> None:
    name = bucket["bucket"].decode()
    client = _client(s3_endpoint)
    big = os.urandom(5 * 2**20 + 4096)
    upload = client.create_multipart_upload(Bucket=name, Key="multi/model.bin")
    parts = []
    for number, (start, end) in enumerate([(0, 5 * 2**20), (5 * 2**20, len(big))], start=1):
        part = client.upload_part(
            Bucket=name,
            Key="multi/model.bin",
            PartNumber=number,
            UploadId=upload["UploadId"],
            Body=big[start:end],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=name,
        Key="multi/model.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    client.put_object(Bucket=name, Key="multi/config.json", Body=b"{}")
    dest = tmp_path / "m"
    await pull(f"s3://{name}/multi", dest, settings=SETTINGS, credentials=creds(s3_endpoint))
    assert (dest / "model.bin").read_bytes() == big
    manifest = json.loads((tmp_path / ".m.manifest.json").read_text())
    digests = {f["path"]: f["digest"] for f in manifest["files"]}
    assert digests["config.json"] == {"algorithm": "md5", "hex": hashlib.md5(b"{}").hexdigest()}
    assert digests["model.bin"] is None  # "<md5 of md5s>-2" is no digest of the bytes


async def test_missing_prefix_or_bucket_is_not_found(
    s3_endpoint: str, bucket: dict[str, bytes], tmp_path: Path
) -> None:
    name = bucket["bucket"].decode()
    with pytest.raises(SourceNotFoundError, match="no objects under"):
        await pull(
            f"s3://{name}/nothing-here/",
            tmp_path / "x",
            settings=SETTINGS,
            credentials=creds(s3_endpoint),
        )
    with pytest.raises(SourceNotFoundError):
        await pull(
            "s3://no-such-bucket-here/x/",
            tmp_path / "x",
            settings=SETTINGS,
            credentials=creds(s3_endpoint),
        )
    assert not (tmp_path / "x").exists()
