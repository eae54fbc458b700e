"""The origin against real clients: huggingface_hub's HfApi and plain aiohttp."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from modelcache.origin.repos import ServedRepo, git_blob_sha1, load_file, load_repo
from modelcache.origin.server import Origin
from modelcache.origin.synthetic import write_synthetic_repo

BIG = "weights/model-00001.safetensors"
SMALL_LFS = "weights/model-00002.safetensors"
FILES = {
    "config.json": 700,
    "tokenizer/vocab.txt": 5000,
    BIG: (3 << 20) + 123,
    SMALL_LFS: 200_000,
}
TOKEN = "s3cret"


@pytest.fixture
async def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    await asyncio.to_thread(write_synthetic_repo, root, FILES, seed=7)
    return root


@pytest.fixture
async def origin(repo_dir: Path) -> Origin:
    repo = await asyncio.to_thread(load_repo, "acme/tiny", repo_dir)
    repo.revisions["refs/pr/1"] = repo.commit_sha
    gated = await asyncio.to_thread(load_repo, "acme/gated", repo_dir, gated=True)
    plain = await asyncio.to_thread(load_file, "big.bin", repo_dir / BIG)
    origin = Origin(tokens={TOKEN})
    origin.add_repo(repo)
    origin.add_repo(gated)
    origin.plain_files["big.bin"] = plain
    return origin


def repo_of(origin: Origin, repo_id: str = "acme/tiny") -> ServedRepo:
    return origin.repos[repo_id]


def content(repo_dir: Path, path: str) -> bytes:
    return (repo_dir / path).read_bytes()


async def list_tree(api: HfApi, repo_id: str, revision: str) -> list[RepoFile | RepoFolder]:
    def listing() -> list[RepoFile | RepoFolder]:
        return list(api.list_repo_tree(repo_id, revision=revision, recursive=True))

    return await asyncio.to_thread(listing)


# --- metadata through huggingface_hub ---------------------------------------------------------


async def test_model_info_gives_the_commit_and_files(url: str, origin: Origin) -> None:
    api = HfApi(endpoint=url, token=False)
    for revision in ("main", "refs/pr/1", repo_of(origin).commit_sha, None):
        info = await asyncio.to_thread(api.model_info, "acme/tiny", revision=revision)
        assert info.sha == repo_of(origin).commit_sha
        assert info.siblings is not None
        assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)

    detailed = await asyncio.to_thread(api.model_info, "acme/tiny", files_metadata=True)
    assert detailed.siblings is not None
    sizes = {s.rfilename: s.size for s in detailed.siblings}
    assert sizes == FILES
    lfs = {s.rfilename: s.lfs.sha256 for s in detailed.siblings if s.lfs is not None}
    assert lfs == {p: f.sha256 for p, f in ((f.path, f) for f in repo_of(origin).files) if f.is_lfs}


async def test_model_info_errors_map_to_huggingface_hub_exceptions(url: str) -> None:
    api = HfApi(endpoint=url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        await asyncio.to_thread(api.model_info, "acme/nothing")
    with pytest.raises(RevisionNotFoundError):
        await asyncio.to_thread(api.model_info, "acme/tiny", revision="no-such-branch")


async def test_tree_lists_sizes_and_both_digests(url: str, origin: Origin, repo_dir: Path) -> None:
    entries = await list_tree(HfApi(endpoint=url, token=False), "acme/tiny", "main")
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}

    assert folders == {"tokenizer", "weights"}
    assert {path: f.size for path, f in files.items()} == FILES
    for path, entry in files.items():
        data = content(repo_dir, path)
        if path.endswith(".safetensors"):
            assert entry.lfs is not None
            assert entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert entry.lfs.size == len(data)
            assert entry.blob_id != git_blob_sha1(data)  # LFS: the oid is the pointer's
        else:
            assert entry.lfs is None
            assert entry.blob_id == git_blob_sha1(data)
        assert entry.xet_hash is None


async def test_tree_pages_follow_the_link_header(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    api = HfApi(endpoint=url, token=False)
    whole = await list_tree(api, "acme/tiny", "main")
    origin.tree_page_size = 2

    paged = await list_tree(api, "acme/tiny", "refs/pr/1")
    assert [e.path for e in paged] == [e.path for e in whole]
    async with session.get(f"{url}/api/models/acme/tiny/tree/main?recursive=true") as response:
        assert len(await response.json()) == 2
        assert 'rel="next"' in response.headers["Link"]
        assert "cursor=2" in response.headers["Link"]
    assert origin.stats.requests["tree"] >= 4


async def test_tree_of_a_folder_and_of_nothing(url: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{url}/api/models/acme/tiny/tree/main/weights") as response:
        paths = [e["path"] for e in await response.json()]
    assert paths == [BIG, SMALL_LFS]
    async with session.get(f"{url}/api/models/acme/tiny/tree/main") as response:
        top = [(e["type"], e["path"]) for e in await response.json()]
    assert top == [("file", "config.json"), ("directory", "tokenizer"), ("directory", "weights")]
    async with session.get(f"{url}/api/models/acme/tiny/tree/main/nope") as response:
        assert response.status == 404
        assert response.headers["X-Error-Code"] == "EntryNotFound"


async def test_xet_repos_advertise_hashes_but_serve_http(
    url: str, origin: Origin, session: aiohttp.ClientSession, repo_dir: Path
) -> None:
    repo_of(origin).xet = True
    entries = await list_tree(HfApi(endpoint=url, token=False), "acme/tiny", "main")
    hashes = {e.path: e.xet_hash for e in entries if isinstance(e, RepoFile)}
    assert hashes["config.json"] is None
    big_hash = hashes[BIG]
    assert big_hash is not None
    assert len(big_hash) == 64

    async with session.head(f"{url}/acme/tiny/resolve/main/{BIG}", allow_redirects=False) as head:
        assert head.headers["X-Xet-Hash"] == hashes[BIG]
        assert head.headers["X-Xet-Refresh-Route"].endswith(
            "/xet-read-token/" + head.headers["X-Repo-Commit"]
        )
        assert 'rel="xet-auth"' in head.headers["Link"]
    async with session.get(f"{url}/acme/tiny/resolve/main/{BIG}") as response:
        assert await response.read() == content(repo_dir, BIG)


async def test_gated_repos_need_a_token(url: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(GatedRepoError):
        await asyncio.to_thread(HfApi(endpoint=url, token=False).model_info, "acme/gated")
    with pytest.raises(GatedRepoError):
        await asyncio.to_thread(HfApi(endpoint=url, token="wrong").model_info, "acme/gated")
    info = await asyncio.to_thread(HfApi(endpoint=url, token=TOKEN).model_info, "acme/gated")
    assert info.gated == "auto"

    resolve = f"{url}/acme/gated/resolve/main/config.json"
    async with session.get(resolve) as response:
        assert response.status == 401
        assert response.headers["X-Error-Code"] == "GatedRepo"
    async with session.get(resolve, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200


# --- resolve, cdn and plain files ----------------------------------------------------------


async def test_small_files_are_served_by_resolve(
    url: str, origin: Origin, session: aiohttp.ClientSession, repo_dir: Path
) -> None:
    async with session.get(f"{url}/acme/tiny/resolve/main/tokenizer/vocab.txt") as response:
        assert response.status == 200
        body = await response.read()
        assert response.headers["X-Repo-Commit"] == repo_of(origin).commit_sha
        assert response.headers["ETag"] == f'"{git_blob_sha1(body)}"'
        assert response.headers["Accept-Ranges"] == "bytes"
        assert "X-Linked-Etag" not in response.headers
    assert body == content(repo_dir, "tokenizer/vocab.txt")


async def test_lfs_files_redirect_to_the_cdn(
    url: str, origin: Origin, session: aiohttp.ClientSession, repo_dir: Path
) -> None:
    served = repo_of(origin).find(BIG)
    assert served is not None
    resolve = f"{url}/acme/tiny/resolve/main/{BIG}"
    async with session.head(resolve, allow_redirects=False) as head:
        assert head.status == 302
        assert head.headers["Location"].startswith(f"{url}/cdn/{served.sha256}?")
        assert head.headers["X-Linked-Etag"] == f'"{served.sha256}"'
        assert head.headers["X-Linked-Size"] == str(served.size)
    async with session.get(resolve) as response:
        assert await response.read() == content(repo_dir, BIG)
    assert origin.stats.requests["resolve"] == 2
    assert origin.stats.requests["cdn"] == 1

    origin.redirect_lfs = False
    async with session.get(resolve, allow_redirects=False) as response:
        assert response.status == 200
        assert await response.read() == content(repo_dir, BIG)


async def test_hf_hub_download_gets_an_lfs_file(
    url: str, origin: Origin, tmp_path: Path, repo_dir: Path
) -> None:
    path = await asyncio.to_thread(
        hf_hub_download,
        "acme/tiny",
        BIG,
        cache_dir=tmp_path / "hf-cache",
        endpoint=url,
        token=False,
    )
    assert Path(path).read_bytes() == content(repo_dir, BIG)
    assert origin.stats.bytes_by_path[BIG] == FILES[BIG]


async def test_missing_things_are_404(url: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{url}/acme/tiny/resolve/main/nope.bin") as response:
        assert response.status == 404
        assert response.headers["X-Error-Code"] == "EntryNotFound"
    async with session.get(f"{url}/acme/nothing/resolve/main/config.json") as response:
        assert response.headers["X-Error-Code"] == "RepoNotFound"
    async with session.get(f"{url}/cdn/{'0' * 64}") as response:
        assert response.status == 404
    async with session.get(f"{url}/files/nope") as response:
        assert response.status == 404
    missing = hf_hub_url("acme/tiny", "nope.bin", endpoint=url)
    with pytest.raises(RemoteEntryNotFoundError):
        await asyncio.to_thread(get_hf_file_metadata, missing, token=False)


async def test_plain_files(url: str, session: aiohttp.ClientSession, repo_dir: Path) -> None:
    expected = content(repo_dir, BIG)
    async with session.head(f"{url}/files/big.bin") as head:
        assert head.headers["Content-Length"] == str(len(expected))
        assert head.headers["ETag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
        assert head.headers["Accept-Ranges"] == "bytes"
        assert await head.read() == b""
    async with session.get(f"{url}/files/big.bin") as response:
        assert await response.read() == expected


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, FILES[BIG] - 1),
        ("bytes=-5", FILES[BIG] - 5, FILES[BIG] - 1),
        ("bytes=3145000-99999999", 3145000, FILES[BIG] - 1),
        ("bytes=0-0", 0, 0),
    ],
)
async def test_ranges(
    url: str,
    origin: Origin,
    session: aiohttp.ClientSession,
    repo_dir: Path,
    header: str,
    start: int,
    end: int,
) -> None:
    expected = content(repo_dir, BIG)
    async with session.get(f"{url}/files/big.bin", headers={"Range": header}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(expected)}"
        assert await response.read() == expected[start : end + 1]
    assert origin.stats.ranges == [("big.bin", start, end)]
    assert origin.stats.body_bytes_sent == end - start + 1


@pytest.mark.parametrize("header", [f"bytes={FILES[BIG]}-", "bytes=-0", f"bytes={FILES[BIG] + 9}-"])
async def test_unsatisfiable_ranges_are_416(
    url: str, session: aiohttp.ClientSession, header: str
) -> None:
    async with session.get(f"{url}/files/big.bin", headers={"Range": header}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{FILES[BIG]}"


async def test_malformed_and_multiple_ranges_get_the_whole_file(
    url: str, session: aiohttp.ClientSession
) -> None:
    for header in ("bytes=5-2", "bytes=0-1,5-6", "pages=1-2"):
        async with session.get(f"{url}/files/big.bin", headers={"Range": header}) as response:
            assert response.status == 200
            assert len(await response.read()) == FILES[BIG]


async def test_stats_count_bytes_and_requests(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{url}/acme/tiny/resolve/main/config.json") as response:
        await response.read()
    async with session.head(f"{url}/files/big.bin") as response:
        await response.read()
    async with session.get(f"{url}/api/models/acme/tiny") as response:
        await response.read()
    stats = origin.stats
    assert stats.body_bytes_sent == FILES["config.json"]
    assert stats.bytes_by_path == {"config.json": FILES["config.json"]}
    assert stats.requests == {"resolve": 1, "file": 1, "revision": 1}
    assert stats.ranges == []

    stats.reset()
    assert stats.body_bytes_sent == 0
    assert not stats.requests


async def test_per_connection_rate_paces_each_body(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    origin.per_connection_rate = 2 << 20
    began = time.monotonic()
    async with session.get(f"{url}/files/big.bin", headers={"Range": "bytes=0-524287"}) as response:
        assert len(await response.read()) == 512 << 10
    assert time.monotonic() - began >= 0.2  # 512 KiB at 2 MiB/s: 0.25 s, less the first write


async def test_total_rate_is_shared_by_all_connections(
    url: str, origin: Origin, session: aiohttp.ClientSession
) -> None:
    """An origin behind a thin pipe: the bodies of all connections together keep to the rate."""

    async def get(start: int) -> int:
        byte_range = {"Range": f"bytes={start}-{start + (512 << 10) - 1}"}
        async with session.get(f"{url}/files/big.bin", headers=byte_range) as response:
            return len(await response.read())

    origin.total_rate = 1 << 20
    began = time.monotonic()
    assert await asyncio.gather(*(get(i << 19) for i in range(4))) == [512 << 10] * 4
    # 2 MiB at 1 MiB/s, the limiter's first second (1 MiB) as a burst: at least 0.9 s more.
    assert time.monotonic() - began >= 0.9
    assert origin.stats.body_bytes_sent == 2 << 20
