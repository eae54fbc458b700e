"""Loading a folder as a served repo: the digests must be the ones the Hub would publish."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelcache.origin.repos import ServedRepo, git_blob_sha1, load_repo


def test_git_blob_sha1_matches_git() -> None:
    assert (
        git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    )  # git hash-object


def make(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def test_load_repo_hashes_and_classifies(tmp_path: Path) -> None:
    big = bytes(range(256)) * 4097  # just over 1 MiB
    root = make(
        tmp_path,
        {
            "config.json": b"{}",
            "w/model.safetensors": b"tiny",
            "w/blob.dat": big,
            ".git/HEAD": b"ref: refs/heads/main\n",
        },
    )
    repo = load_repo("acme/m", root)
    by_path = {f.path: f for f in repo.files}
    assert list(by_path) == ["config.json", "w/blob.dat", "w/model.safetensors"]
    config = by_path["config.json"]
    assert (config.size, config.is_lfs) == (2, False)
    assert config.git_sha1 == git_blob_sha1(b"{}")
    assert config.sha256 == hashlib.sha256(b"{}").hexdigest()
    assert config.tree_oid == config.etag == config.git_sha1
    assert by_path["w/model.safetensors"].is_lfs  # by suffix
    blob = by_path["w/blob.dat"]
    assert blob.is_lfs  # by size
    assert blob.etag == blob.sha256 == hashlib.sha256(big).hexdigest()
    assert blob.lfs_pointer == (
        b"version https://git-lfs.github.com/spec/v1\n"
        + f"oid sha256:{blob.sha256}\nsize {len(big)}\n".encode()
    )
    assert blob.tree_oid == git_blob_sha1(blob.lfs_pointer)
    relaxed = load_repo("acme/m", root, lfs_threshold=10 << 20).find("w/blob.dat")
    assert relaxed is not None
    assert not relaxed.is_lfs


def test_commit_sha_follows_content(tmp_path: Path) -> None:
    root = make(tmp_path, {"a.txt": b"one", "b/c.txt": b"two"})
    first = load_repo("acme/m", root).commit_sha
    assert load_repo("acme/other", root).commit_sha == first
    (root / "b/c.txt").write_bytes(b"TWO")
    changed = load_repo("acme/m", root).commit_sha
    assert changed != first
    assert len(changed) == 40
    assert int(changed, 16) >= 0


def test_revisions(tmp_path: Path) -> None:
    repo = load_repo("acme/m", make(tmp_path, {"a.txt": b"x"}))
    assert repo.revisions == {"main": repo.commit_sha}
    repo.revisions["v1.0"] = repo.commit_sha
    assert repo.resolve_revision("v1.0") == repo.commit_sha
    assert repo.resolve_revision(repo.commit_sha) == repo.commit_sha
    assert repo.resolve_revision("dev") is None


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "/b", "a/"])
def test_repo_ids_are_owner_slash_name(repo_id: str) -> None:
    with pytest.raises(ValueError, match="owner/model"):
        ServedRepo(repo_id=repo_id, commit_sha="0" * 40, files=[])


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="acme/m"):
        load_repo("acme/m", tmp_path / "nope")
