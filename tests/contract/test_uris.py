from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcache.contract.errors import UsageError
from modelcache.contract.storage_keys import storage_key
from modelcache.contract.uris import (
    HttpSource,
    HuggingFaceSource,
    S3Source,
    parse_source_uri,
)

names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,20}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda n: "--" not in n
)
revisions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True).filter(
    lambda r: ".." not in r
)


@given(owner=names, model=names, revision=revisions)
def test_hf_uri_round_trips(owner: str, model: str, revision: str) -> None:
    source = parse_source_uri(f"hf://{owner}/{model}:{revision}")
    assert source == HuggingFaceSource(owner, model, revision)
    assert parse_source_uri(str(source)) == source


def test_hf_revision_defaults_to_main_and_flag_fills_it() -> None:
    assert parse_source_uri("hf://meta-llama/meta-llama-3-8b-instruct") == HuggingFaceSource(
        "meta-llama", "meta-llama-3-8b-instruct", "main"
    )
    assert parse_source_uri("hf://a/b", revision="v1").revision == "v1"  # type: ignore[union-attr]
    assert parse_source_uri("hf://a/b:v1", revision="v1").revision == "v1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("", "empty"),
        ("meta-llama/llama", "no scheme"),
        ("ftp://host/x", "unsupported scheme"),
        ("hf://onlyowner", "hf://OWNER/MODEL"),
        ("hf://a/b/c", "hf://OWNER/MODEL"),
        ("hf://a/b:", "names no revision"),
        ("hf://../b", "invalid owner"),
        ("hf://a/-b", "invalid model"),
        ("hf://a/b:../../x", "not a valid"),
        ("s3://UPPER/x", "invalid bucket"),
        ("s3://ab/x", "invalid bucket"),
        ("https:///nohost", "names no host"),
        ("https://host/", "must name a file"),
        (" hf://a/b", "surrounding spaces"),
    ],
)
def test_malformed_uris_are_refused_with_a_reason(uri: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_source_uri(uri)


def test_conflicting_revisions_and_revision_on_non_hf_are_refused() -> None:
    with pytest.raises(UsageError, match="give one of them"):
        parse_source_uri("hf://a/b:v1", revision="v2")
    with pytest.raises(UsageError, match="hf:// sources only"):
        parse_source_uri("s3://bucket/x", revision="v2")


def test_s3_and_http_forms() -> None:
    assert parse_source_uri("s3://my-bucket/models/llama") == S3Source("my-bucket", "models/llama")
    assert parse_source_uri("s3://my-bucket") == S3Source("my-bucket", "")
    http = parse_source_uri("https://example.com/a/model%20v1.bin")
    assert isinstance(http, HttpSource)
    assert http.file_name == "model v1.bin"


def test_storage_key_matches_kserve() -> None:
    # sha256("hf://meta-llama/meta-llama-3-8b-instruct")[:16], as KServe names the folder.
    import hashlib

    uri = "hf://meta-llama/meta-llama-3-8b-instruct"
    assert storage_key(uri) == hashlib.sha256(uri.encode()).hexdigest()[:16]
    assert len(storage_key(uri)) == 16
    assert storage_key(uri) != storage_key(uri + ":main")
