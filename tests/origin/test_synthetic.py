"""Synthetic repos: exact sizes, determinism, and bytes that nothing can compress."""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import pytest

from modelcache.origin.synthetic import (
    default_demo_files,
    synthetic_content,
    write_synthetic_repo,
)

MIB = 1 << 20
FILES = {
    "empty.bin": 0,
    "one.bin": 1,
    "config.json": 640,
    "tiny.json": 3,
    "exact.bin": MIB,
    "weights/model-00001.safetensors": 3 * MIB + 5,
    "weights/deeper/model-00002.bin": MIB + 1,
}


def read_all(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sizes_are_exact_and_nothing_else_is_left(tmp_path: Path) -> None:
    write_synthetic_repo(tmp_path, FILES)
    assert {path: len(data) for path, data in read_all(tmp_path).items()} == FILES


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    write_synthetic_repo(tmp_path / "a", FILES, seed=1)
    write_synthetic_repo(tmp_path / "b", FILES, seed=1)
    write_synthetic_repo(tmp_path / "c", FILES, seed=2)
    a, b, c = (read_all(tmp_path / name) for name in "abc")
    assert a == b
    for path, data in a.items():
        if len(data) > 16:
            assert data != c[path], path


def test_bulk_data_is_neither_compressible_nor_repetitive() -> None:
    data = b"".join(bytes(chunk) for chunk in synthetic_content("w.bin", 4 * MIB))
    assert len(zlib.compress(data, 1)) > 0.99 * len(data)
    # No 32-byte window of a later block occurs anywhere in the first one, so no long-range
    # matcher (zstd --long, content-defined dedup) can shrink it either.
    first = data[:MIB]
    pick = random.Random(0)
    for _ in range(300):
        at = pick.randrange(MIB, len(data) - 32)
        assert data[at : at + 32] not in first


def test_json_and_safetensors_files_look_real(tmp_path: Path) -> None:
    write_synthetic_repo(tmp_path, default_demo_files())
    config = json.loads((tmp_path / "config.json").read_bytes())
    assert config["model_type"] == "llama"
    weights = (tmp_path / "model.safetensors").read_bytes()
    (header_length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + header_length])
    begin, end = header["weight"]["data_offsets"]
    assert 8 + header_length + end == len(weights)
    assert begin == 0
    total = sum(default_demo_files().values())
    assert 30 * MIB <= total <= 50 * MIB


@pytest.mark.parametrize("path", ["../escape.bin", "/abs.bin", "a/./b.bin", ""])
def test_paths_must_stay_inside_the_repo(tmp_path: Path, path: str) -> None:
    with pytest.raises(ValueError, match="inside the repo"):
        write_synthetic_repo(tmp_path / "repo", {path: 10})
