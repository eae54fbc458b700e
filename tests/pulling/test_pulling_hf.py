"""hf:// pulls end to end against the in-process Hub origin: listing, bytes, faults, safety."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import re
import threading
import time
from pathlib import Path

import pytest

from modelcache.contract.errors import (
    AccessDeniedError,
    DestinationConflictError,
    InsufficientDiskError,
    IntegrityError,
    PermanentError,
    SourceNotFoundError,
    UnsafeListingError,
)
from modelcache.origin.faults import FaultRule
from modelcache.pulling import PullProgress, SourceCredentials, pull
from modelcache.pulling.directio import BodyBlock
from modelcache.pulling.verifying import TrailingHasher
from tests.hub_origin import FAST, REPO_FILES, HubFixture, tree_of

URI = "hf://acme/tiny-model"
TOTAL = sum(REPO_FILES.values())


async def test_pull_publishes_exactly_the_repo_and_a_manifest(
    hub: HubFixture, tmp_path: Path
) -> None:
    events: list[PullProgress] = []
    dest = tmp_path / "models" / "tiny"
    result = await pull(
        URI, dest, settings=FAST, credentials=hub.credentials, progress=events.append
    )

    assert tree_of(dest) == tree_of(hub.source_dir)
    assert result.revision == hub.repo.commit_sha
    assert (result.files, result.total_bytes, result.fetched_bytes) == (5, TOTAL, TOTAL)
    assert not result.up_to_date
    # Staging is gone; only the model and its sidecars remain beside it.
    assert sorted(p.name for p in dest.parent.iterdir()) == [
        ".tiny.lock",
        ".tiny.manifest.json",
        "tiny",
    ]
    manifest = json.loads((dest.parent / ".tiny.manifest.json").read_text())
    assert manifest["revision"] == hub.repo.commit_sha
    by_path = {f["path"]: f for f in manifest["files"]}
    lfs = next(f for f in hub.repo.files if f.path == "model-00002-of-00002.safetensors")
    assert by_path[lfs.path]["digest"] == {"algorithm": "sha256", "hex": lfs.sha256}
    small = next(f for f in hub.repo.files if f.path == "config.json")
    assert by_path["config.json"]["digest"] == {"algorithm": "git-sha1", "hex": small.git_sha1}
    # Progress reached the total, per file and overall.
    assert events[-1].done == TOTAL
    assert max(e.file_done for e in events if e.path == lfs.path) == lfs.size
    # LFS bytes came as ranged requests, spread over several chunks.
    assert hub.origin.stats.requests["cdn"] > 10


async def test_rerun_after_success_verifies_and_fetches_nothing(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    sent = hub.data_bytes_sent()
    again = await pull(URI, dest, settings=FAST, credentials=hub.credentials, verify_digests=True)
    assert again.up_to_date
    assert again.fetched_bytes == 0
    assert hub.data_bytes_sent() == sent


async def test_truncated_published_file_is_detected_and_pulled_again(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    with open(dest / "model-00001-of-00002.safetensors", "r+b") as f:
        f.truncate(1000)
    again = await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert not again.up_to_date
    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_revision_is_pinned_and_named_revisions_resolve(
    hub: HubFixture, tmp_path: Path
) -> None:
    hub.repo.revisions["v1.0"] = hub.repo.commit_sha
    result = await pull(f"{URI}:v1.0", tmp_path / "m", settings=FAST, credentials=hub.credentials)
    assert result.revision == hub.repo.commit_sha
    with pytest.raises(SourceNotFoundError, match="revision 'nope' does not exist"):
        await pull(f"{URI}:nope", tmp_path / "n", settings=FAST, credentials=hub.credentials)


async def test_xet_advertising_hub_still_pulls_over_http(hub: HubFixture, tmp_path: Path) -> None:
    hub.repo.xet = True
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_paginated_tree_listing(hub: HubFixture, tmp_path: Path) -> None:
    hub.origin.tree_page_size = 2
    dest = tmp_path / "m"
    result = await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert result.files == 5
    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_include_and_exclude(hub: HubFixture, tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, include=("*.json",), exclude=("tokenizer/*",))
    dest = tmp_path / "m"
    await pull(URI, dest, settings=settings, credentials=hub.credentials)
    assert list(tree_of(dest)) == ["config.json"]
    with pytest.raises(SourceNotFoundError, match="no files matching"):
        await pull(
            URI,
            tmp_path / "n",
            credentials=hub.credentials,
            settings=dataclasses.replace(FAST, include=("*.gguf",)),
        )


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(lambda f: f.status(500, count=3), id="5xx"),
        pytest.param(lambda f: f.status(503, count=2, retry_after="0"), id="503-retry-after"),
        pytest.param(lambda f: f.reset(after_bytes=100_000, count=2), id="reset-mid-body"),
        pytest.param(lambda f: f.truncate(after_bytes=50_000, count=2), id="truncated-body"),
        pytest.param(lambda f: f.flip(offset_in_response=1234, count=1), id="flipped-byte"),
        pytest.param(lambda f: f.ignore_range(count=None, path="model-00002"), id="200-not-206"),
        pytest.param(lambda f: f.stall(after_bytes=10_000, seconds=3, count=1), id="stall"),
    ],
)
async def test_faults_are_survived_and_the_result_is_exact(
    hub: HubFixture, tmp_path: Path, inject: object
) -> None:
    rule = inject(hub.origin.faults)  # type: ignore[operator]
    settings = dataclasses.replace(FAST, stall_timeout=0.5)
    dest = tmp_path / "m"
    result = await pull(URI, dest, settings=settings, credentials=hub.credentials)
    assert tree_of(dest) == tree_of(hub.source_dir)
    assert result.total_bytes == TOTAL
    assert rule.hits >= 1  # the fault really happened


async def test_429_retry_after_is_honoured(hub: HubFixture, tmp_path: Path) -> None:
    hub.origin.faults.status(429, count=1, retry_after="1")
    started = time.monotonic()
    await pull(URI, tmp_path / "m", settings=FAST, credentials=hub.credentials)
    assert time.monotonic() - started >= 0.9  # the jittered backoff alone would be ~10 ms


async def test_persistent_corruption_fails_and_publishes_nothing(
    hub: HubFixture, tmp_path: Path
) -> None:
    hub.origin.faults.flip(offset_in_response=0, count=None, path="model-00002")
    dest = tmp_path / "m"
    with pytest.raises(
        IntegrityError, match=r"model-00002-of-00002.safetensors .* after 3 downloads"
    ):
        await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert not dest.exists()
    assert not (tmp_path / ".m.manifest.json").exists()


async def test_endless_server_errors_give_up_with_a_temporary_error(
    hub: HubFixture, tmp_path: Path
) -> None:
    hub.origin.faults.status(502, count=None)
    settings = dataclasses.replace(FAST, attempts_per_chunk=3)
    with pytest.raises(Exception, match="HTTP 502") as info:
        await pull(URI, tmp_path / "m", settings=settings, credentials=hub.credentials)
    assert type(info.value).__name__ == "TemporaryError"
    assert not (tmp_path / "m").exists()


async def test_missing_repo_and_gated_repo_fail_fast_with_advice(
    hub: HubFixture, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(SourceNotFoundError, match="repository not found"):
        await pull("hf://acme/nope", tmp_path / "m", settings=FAST, credentials=hub.credentials)
    hub.repo.gated = True
    hub.origin.tokens.add("secret")
    with pytest.raises(AccessDeniedError, match="HF_TOKEN"):
        await pull(URI, tmp_path / "m", settings=FAST, credentials=hub.credentials)
    assert time.monotonic() - started < 5  # no retries on permanent errors
    with_token = SourceCredentials(hf_endpoint=hub.url, hf_token="secret")
    await pull(URI, tmp_path / "m", settings=FAST, credentials=with_token)
    assert tree_of(tmp_path / "m") == tree_of(hub.source_dir)


async def test_not_enough_disk_fails_before_any_byte_moves(hub: HubFixture, tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, min_free_bytes=1 << 60)
    with pytest.raises(InsufficientDiskError, match=r"needs 5\.\d MiB more .* only .* available"):
        await pull(URI, tmp_path / "m", settings=settings, credentials=hub.credentials)
    assert hub.data_bytes_sent() == 0
    assert not (tmp_path / "m").exists()


async def test_traversal_listing_is_refused_before_anything_is_written(
    hub: HubFixture, tmp_path: Path
) -> None:
    real = hub.repo.files[0]
    hub.repo.files.append(dataclasses.replace(real, path="../../escape.json"))
    dest = tmp_path / "deep" / "m"
    with pytest.raises(UnsafeListingError, match=re.escape("unsafe file name '../../escape.json'")):
        await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert not (tmp_path / "deep").exists()
    assert not (tmp_path / "escape.json").exists()


async def test_foreign_destination_is_never_overwritten(hub: HubFixture, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(DestinationConflictError, match="not created by modelcache"):
        await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert (dest / "precious.txt").read_text() == "keep me"


async def test_changed_source_discards_the_old_partial(hub: HubFixture, tmp_path: Path) -> None:
    """A partial left by one commit is not mixed into the pull of another."""
    dest = tmp_path / "m"
    hub.origin.faults.status(404, count=None, path="model-00002")
    with pytest.raises(SourceNotFoundError):
        await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    staging = tmp_path / ".m.partial"
    assert (staging / "journal").read_text()  # something was kept for a resume
    hub.origin.faults.clear()
    hub.commit("config.json", b'{"changed": true}')
    result = await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert result.fetched_bytes == result.total_bytes
    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_single_https_file(hub: HubFixture, tmp_path: Path) -> None:
    from modelcache.origin.repos import load_file

    blob = hub.source_dir / "model-00001-of-00002.safetensors"
    hub.origin.plain_files["weights.bin"] = load_file("weights.bin", blob)
    dest = tmp_path / "w"
    result = await pull(
        f"{hub.url}/files/weights.bin", dest, settings=FAST, credentials=hub.credentials
    )
    assert tree_of(dest) == {"weights.bin": blob.read_bytes()}
    assert result.files == 1
    with pytest.raises(SourceNotFoundError):
        await pull(
            f"{hub.url}/files/missing.bin",
            tmp_path / "x",
            settings=FAST,
            credentials=hub.credentials,
        )


async def test_bandwidth_cap_holds_the_whole_pull_to_the_rate(
    hub: HubFixture, tmp_path: Path
) -> None:
    rate = 1 << 20
    settings = dataclasses.replace(
        FAST, max_bandwidth=rate, include=("model-00002-of-00002.safetensors",)
    )
    started = time.monotonic()
    await pull(URI, tmp_path / "m", settings=settings, credentials=hub.credentials)
    elapsed = time.monotonic() - started
    # 2 MiB at 1 MiB/s, less the one-second burst the token bucket starts with.
    assert elapsed >= 0.9
    assert tree_of(tmp_path / "m") == {
        "model-00002-of-00002.safetensors": hub.expected_bytes("model-00002-of-00002.safetensors")
    }


async def test_hub_is_asked_once_per_lfs_file_not_once_per_chunk(
    hub: HubFixture, tmp_path: Path
) -> None:
    await pull(URI, tmp_path / "m", settings=FAST, credentials=hub.credentials)
    chunks = hub.origin.stats.requests["cdn"]
    lfs_files = sum(1 for f in hub.repo.files if f.is_lfs)
    assert chunks > 10
    # Each worker may race to the Hub before the first redirect is remembered.
    assert hub.origin.stats.requests["resolve"] <= lfs_files * FAST.concurrency + 3


async def test_verify_rehashes_and_repairs_same_size_corruption(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    target = dest / "model-00001-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    quick = await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    assert quick.up_to_date  # sizes alone cannot see it
    full = await pull(URI, dest, settings=FAST, credentials=hub.credentials, verify_digests=True)
    assert not full.up_to_date
    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_unwritable_destination_is_a_clear_error(hub: HubFixture, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(PermanentError, match=r"cannot write .*not-a-folder"):
        await pull(URI, blocker / "m", settings=FAST, credentials=hub.credentials)


async def test_expired_redirect_target_sends_the_worker_back_to_the_hub(
    hub: HubFixture, tmp_path: Path
) -> None:
    """Once a CDN URL is remembered, a 403 from it (an expired signature) is not fatal."""
    rules: list[FaultRule] = []

    def expire_after_first_write(event: PullProgress) -> None:
        if not rules and event.path == "model-00001-of-00002.safetensors":
            rules.append(hub.origin.faults.status(403, count=1, path="model-00001"))

    # One connection: its first request has followed the redirect before the first write, so
    # the 403 meets the remembered target (another connection's first request could meet it
    # on a fresh redirect, where a 403 is a real refusal and fails the pull).
    settings = dataclasses.replace(
        FAST, include=("model-00001-of-00002.safetensors",), concurrency=1
    )
    dest = tmp_path / "m"
    await pull(
        URI,
        dest,
        settings=settings,
        credentials=hub.credentials,
        progress=expire_after_first_write,
    )
    assert rules[0].hits == 1
    assert tree_of(dest) == {
        "model-00001-of-00002.safetensors": hub.expected_bytes("model-00001-of-00002.safetensors")
    }


async def test_new_revision_fetches_only_changed_files_and_links_the_rest(
    hub: HubFixture, tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    big = dest / "model-00001-of-00002.safetensors"
    inode_before = big.stat().st_ino
    hub.commit("config.json", b'{"changed": true}')
    hub.origin.stats.reset()

    result = await pull(URI, dest, settings=FAST, credentials=hub.credentials)

    assert result.revision == hub.repo.commit_sha
    assert result.fetched_bytes == len(b'{"changed": true}')
    assert hub.data_bytes_sent() == result.fetched_bytes
    assert big.stat().st_ino == inode_before  # the very same file, carried over by a link
    assert tree_of(dest) == tree_of(hub.source_dir)
    assert not (tmp_path / ".m.retired").exists()


async def test_verify_flag_never_trusts_the_published_copy(hub: HubFixture, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    await pull(URI, dest, settings=FAST, credentials=hub.credentials)
    target = dest / "model-00002-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))  # silent corruption, same size
    hub.commit("config.json", b'{"changed": 2}')

    await pull(URI, dest, settings=FAST, credentials=hub.credentials, verify_digests=True)

    assert tree_of(dest) == tree_of(hub.source_dir)


async def test_buffered_writes_when_direct_io_is_off(hub: HubFixture, tmp_path: Path) -> None:
    """The path taken wherever the filesystem refuses O_DIRECT (direct descriptor -1)."""
    settings = dataclasses.replace(FAST, direct_io=False)
    await pull(URI, tmp_path / "m", settings=settings, credentials=hub.credentials)
    assert tree_of(tmp_path / "m") == tree_of(hub.source_dir)


@pytest.mark.parametrize("cancels", [1, 3])
async def test_a_cancelled_pull_stops_at_once_even_while_every_body_stalls(
    hub: HubFixture, tmp_path: Path, cancels: int
) -> None:
    """Origin bodies are read on threads: cancelling must unblock them, not wait for a stall
    timeout, and leave no thread writing into the staging files."""
    stall = hub.origin.faults.stall(after_bytes=10_000, seconds=30, count=None)
    settings = dataclasses.replace(FAST, stall_timeout=60.0)
    dest = tmp_path / "m"
    pulling = asyncio.create_task(pull(URI, dest, settings=settings, credentials=hub.credentials))
    while stall.hits < settings.concurrency:
        await asyncio.sleep(0.02)
    started = time.monotonic()
    for _ in range(cancels):  # more cancels (an impatient caller) must not cut the cleanup short
        pulling.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await pulling
    assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name.startswith("modelcache-fetch")]
    assert not dest.exists()


async def test_blocks_written_ahead_are_hashed_from_memory_not_read_back(
    hub: HubFixture, tmp_path: Path
) -> None:
    """Several connections per file write ahead of its hashing frontier; the blocks they hold
    cover it, so the pull reads nothing back from disk to verify."""
    read_back: list[int] = []
    original = TrailingHasher.matches

    def counting(self: TrailingHasher) -> bool:
        read_back.append(self.read_back)
        return original(self)

    settings = dataclasses.replace(FAST, chunk_size=64 * 1024, write_block=16 * 1024)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrailingHasher, "matches", counting)
        await pull(URI, tmp_path / "m", settings=settings, credentials=hub.credentials)
    assert tree_of(tmp_path / "m") == tree_of(hub.source_dir)
    assert len(read_back) == len(REPO_FILES)  # every file has a digest to check
    assert sum(read_back) == 0


async def test_a_finished_pull_leaves_no_receive_block_in_memory(
    hub: HubFixture, tmp_path: Path
) -> None:
    """Freed by reference counting alone: an idle agent may run no garbage collection for a
    long time, and a cycle would keep a pull's blocks (tens of MiB) until one."""
    gc.collect()
    gc.disable()
    try:
        await pull(URI, tmp_path / "m", settings=FAST, credentials=hub.credentials)
        alive = [o for o in gc.get_objects() if isinstance(o, BodyBlock)]
    finally:
        gc.enable()
    assert alive == []
