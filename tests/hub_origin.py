"""A real Hugging Face-protocol origin, in process, with a small synthetic repo."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcache.origin.repos import ServedRepo, load_repo
from modelcache.origin.server import Origin, start_origin
from modelcache.origin.synthetic import write_synthetic_repo
from modelcache.pulling import PullSettings, SourceCredentials

MiB = 1 << 20
REPO_FILES = {
    "config.json": 2_000,
    "model-00001-of-00002.safetensors": 3 * MiB + 123,
    "model-00002-of-00002.safetensors": 2 * MiB,
    "tokenizer/tokenizer.json": 500_000,
    "empty.txt": 0,
}
FAST = PullSettings(
    chunk_size=256 * 1024,
    concurrency=4,
    min_free_bytes=0,
    retry_base_delay=0.01,
    retry_max_delay=2.0,
    stall_timeout=5.0,
)


@dataclass
class HubFixture:
    origin: Origin
    url: str
    repo: ServedRepo
    source_dir: Path

    @property
    def credentials(self) -> SourceCredentials:
        return SourceCredentials(hf_endpoint=self.url)

    def expected_bytes(self, path: str) -> bytes:
        return (self.source_dir / path).read_bytes()

    def commit(self, path: str, data: bytes) -> None:
        """Change one file of the served repo: a new commit sha, a new fingerprint."""
        (self.source_dir / path).write_bytes(data)
        self.repo = load_repo(self.repo.repo_id, self.source_dir)
        self.origin.add_repo(self.repo)

    def data_bytes_sent(self) -> int:
        return self.origin.stats.body_bytes_sent


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubFixture]:
    source_dir = tmp_path / "origin-repo"
    write_synthetic_repo(source_dir, REPO_FILES, seed=7)
    repo = load_repo("acme/tiny-model", source_dir)
    origin = Origin()
    origin.add_repo(repo)
    runner, url = await start_origin(origin, shutdown_timeout=0.5)
    try:
        yield HubFixture(origin, url, repo, source_dir)
    finally:
        await runner.cleanup()


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
