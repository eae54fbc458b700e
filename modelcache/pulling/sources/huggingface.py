"""Hugging Face Hub (or a mirror at HF_ENDPOINT): the listing through huggingface_hub's HfApi.

Bytes are not fetched through huggingface_hub: the engine does ranged GETs on the `resolve` URL
pinned to the resolved commit. Xet-backed files are served there too (the Hub bridges them), so
Xet hints in the listing or headers are simply not needed.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from modelcache.contract.errors import (
    AccessDeniedError,
    SourceNotFoundError,
    TemporaryError,
)
from modelcache.contract.uris import HuggingFaceSource
from modelcache.pulling.httperrors import error_for_status
from modelcache.pulling.listing import Digest, RemoteFile, RemoteListing
from modelcache.pulling.settings import SourceCredentials

AUTH_HINT = (
    "for a private or gated repo set HF_TOKEN to a token of an account that has access "
    "(gated: accept the model's terms on the Hub first)"
)


async def list_huggingface(
    source: HuggingFaceSource, uri: str, credentials: SourceCredentials
) -> RemoteListing:
    api = HfApi(endpoint=credentials.hf_endpoint, token=credentials.hf_token or False)
    what = f"{uri} (at {credentials.hf_endpoint})"
    try:
        sha, entries = await asyncio.to_thread(_list_pinned, api, source)
    except GatedRepoError as e:
        raise AccessDeniedError(f"{what} is gated: {AUTH_HINT}") from e
    except RevisionNotFoundError as e:
        raise SourceNotFoundError(
            f"{what}: revision {source.revision!r} does not exist: check the branch, tag or commit"
        ) from e
    except RepositoryNotFoundError as e:
        raise SourceNotFoundError(
            f"{what}: repository not found; check the name, or {AUTH_HINT}"
        ) from e
    except HfHubHTTPError as e:
        response = e.response
        raise error_for_status(
            response.status_code, response.headers, what=what, auth_hint=AUTH_HINT
        ) from e
    except httpx2.HTTPError as e:
        raise TemporaryError(f"{what}: cannot reach the Hub: {e}") from e

    base = f"{credentials.hf_endpoint}/{source.repo_id}/resolve/{sha}/"
    files = tuple(
        RemoteFile(
            path=entry.path,
            size=entry.size,
            url=base + quote(entry.path),
            digest=Digest("sha256", entry.lfs.sha256)
            if entry.lfs is not None
            else Digest("git-sha1", entry.blob_id),
            etag=entry.lfs.sha256 if entry.lfs is not None else entry.blob_id,
        )
        for entry in entries
    )
    headers = {"Authorization": f"Bearer {credentials.hf_token}"} if credentials.hf_token else {}
    return RemoteListing(source=uri, revision=sha, files=files, request_headers=headers)


def _list_pinned(api: HfApi, source: HuggingFaceSource) -> tuple[str, list[RepoFile]]:
    """Resolve the revision to a commit, then list that commit, so both answers agree."""
    info = api.model_info(source.repo_id, revision=source.revision)
    if not info.sha:
        raise TemporaryError(f"the Hub gave no commit sha for {source}")
    entries = api.list_repo_tree(source.repo_id, revision=info.sha, recursive=True)
    return info.sha, sorted((e for e in entries if isinstance(e, RepoFile)), key=lambda e: e.path)
