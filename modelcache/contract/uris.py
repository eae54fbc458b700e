"""Model source URIs, parsed once into typed values with errors a user can act on.

Forms (KServe's): ``hf://OWNER/MODEL[:REVISION]``, ``s3://BUCKET[/PREFIX]``, ``https://HOST/PATH``
(``http://`` too, for in-cluster mirrors and local origins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from modelcache.contract.errors import UsageError

# Hub repo names: letters, digits, '.', '_', '-'; no leading punctuation, no '--' or '..' runs.
_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
# Branches, tags and commit shas; 'refs/pr/1' style revisions carry slashes.
_HF_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

DEFAULT_HF_REVISION = "main"


@dataclass(frozen=True, slots=True)
class HuggingFaceSource:
    owner: str
    model: str
    revision: str = DEFAULT_HF_REVISION

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.model}"

    def __str__(self) -> str:
        return f"hf://{self.repo_id}:{self.revision}"


@dataclass(frozen=True, slots=True)
class S3Source:
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class HttpSource:
    url: str

    @property
    def file_name(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    def __str__(self) -> str:
        return self.url


ModelSource = HuggingFaceSource | S3Source | HttpSource


def parse_source_uri(uri: str, *, revision: str | None = None) -> ModelSource:
    """Parse a source URI; `revision` (from a flag) overrides or fills an hf:// revision."""
    if not uri or uri != uri.strip():
        raise UsageError(f"source URI {uri!r} is empty or has surrounding spaces")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise UsageError(
            f"source URI {uri!r} has no scheme: use hf://OWNER/MODEL, s3://BUCKET/PREFIX or "
            "https://HOST/PATH"
        )
    scheme = scheme.lower()
    if scheme == "hf":
        return _parse_hf(uri, rest, revision)
    if revision is not None:
        raise UsageError(f"--revision applies to hf:// sources only, not {uri!r}")
    if scheme == "s3":
        return _parse_s3(uri, rest)
    if scheme in ("https", "http"):
        return _parse_http(uri)
    raise UsageError(
        f"source URI {uri!r} has unsupported scheme {scheme!r}: use hf://, s3:// or https://"
    )


def _parse_hf(uri: str, rest: str, revision_flag: str | None) -> HuggingFaceSource:
    repo, colon, revision = rest.partition(":")
    parts = repo.split("/")
    if len(parts) != 2:
        raise UsageError(f"source URI {uri!r} must have the form hf://OWNER/MODEL[:REVISION]")
    owner, model = parts
    for label, name in (("owner", owner), ("model", model)):
        if not _HF_NAME.match(name) or "--" in name or ".." in name:
            raise UsageError(
                f"source URI {uri!r} has an invalid {label} name {name!r}: use letters, digits, "
                "'.', '_' and '-' (no leading or trailing punctuation, no '--' or '..')"
            )
    if colon and not revision:
        raise UsageError(f"source URI {uri!r} ends with ':' but names no revision")
    if revision and revision_flag and revision != revision_flag:
        raise UsageError(
            f"source URI {uri!r} names revision {revision!r} but --revision says "
            f"{revision_flag!r}: give one of them"
        )
    chosen = revision or revision_flag or DEFAULT_HF_REVISION
    if not _HF_REVISION.match(chosen) or ".." in chosen:
        raise UsageError(f"revision {chosen!r} of {uri!r} is not a valid branch, tag or commit")
    return HuggingFaceSource(owner=owner, model=model, revision=chosen)


def _parse_s3(uri: str, rest: str) -> S3Source:
    bucket, _, prefix = rest.partition("/")
    if not _S3_BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"source URI {uri!r} has an invalid bucket name {bucket!r}: 3-63 lowercase letters, "
            "digits, '.' and '-'"
        )
    if "\x00" in prefix:
        raise UsageError(f"source URI {uri!r} contains a NUL character")
    return S3Source(bucket=bucket, prefix=prefix)


def _parse_http(uri: str) -> HttpSource:
    parts = urlsplit(uri)
    if not parts.hostname:
        raise UsageError(f"source URI {uri!r} names no host: use https://HOST/PATH")
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise UsageError(f"source URI {uri!r} must name a file, e.g. https://HOST/model.bin")
    return HttpSource(url=uri)
