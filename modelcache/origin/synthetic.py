"""Synthetic model repositories: realistic sizes and incompressible bytes, made fast.

Tests and benchmarks need gigabytes of model-like data that no compressor or deduplicating
store can shrink, or transfer figures would flatter the code under test. Python's own random
generators run at ~200 MB/s here, so the bulk data is built from one random 1 MiB block per
file: each output block is that block rotated by a random offset and passed through a fresh
random byte permutation (`bytes.translate`, ~1 GB/s). Any two blocks then share no long exact
substring, which is what compressors and content-defined dedup look for.

Files named `*.json` get a real JSON document and `*.safetensors` a valid safetensors header,
both padded to the exact size asked for, so a demo model looks like one to tools that peek.
Everything is deterministic given the seed and the file's path.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

DEMO_REPO_ID = "demo/tiny-llama"

_BLOCK = 1 << 20
_SAFETENSORS_HEADER = 128  # bytes of JSON, space-padded; a multiple of 8 as the format likes
DEMO_SIZE = 40 * _BLOCK
_DEMO_CONFIG, _DEMO_TOKENIZER = 712, 1_572_864
DEMO_MIN_SIZE = _DEMO_CONFIG + _DEMO_TOKENIZER + 8 + _SAFETENSORS_HEADER
_JSON_FIELDS: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 32000,
    "torch_dtype": "bfloat16",
    "_synthetic": "written by modelcache.origin.synthetic; weights are random bytes",
}


def write_synthetic_repo(root: Path, files: Mapping[str, int], *, seed: int = 0) -> None:
    """Write each relative posix path in `files` under `root` with exactly that many bytes.

    Blocking (disk writes): from async code call it through `asyncio.to_thread`. Each file is
    written beside its target and renamed into place, so an interrupted run never leaves a
    file of the right name and the wrong content.
    """
    for relative, size in files.items():
        target = root.joinpath(*_checked_parts(relative))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as out:
                for chunk in synthetic_content(relative, size, seed=seed):
                    out.write(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)


def synthetic_content(path: str, size: int, *, seed: int = 0) -> Iterator[bytes | memoryview]:
    """The bytes `write_synthetic_repo` writes for `path`, as chunks of at most 1 MiB."""
    if size < 0:
        raise ValueError(f"synthetic file {path!r}: size must be >= 0, got {size}")
    rng = random.Random(f"modelcache-synthetic:{seed}:{path}")
    if path.endswith(".json"):
        document = _json_document(size, rng)
        if document is not None:
            yield document
            return
    elif path.endswith(".safetensors"):
        header = _safetensors_header(size)
        if header is not None:
            yield header
            size -= len(header)
    yield from _random_blocks(size, rng)


def default_demo_files() -> dict[str, int]:
    """A small model to demo with: a config, a tokenizer and ~40 MiB of safetensors weights."""
    return demo_files(DEMO_SIZE)


def demo_files(total_bytes: int) -> dict[str, int]:
    """The demo model's files at `total_bytes` in all: the weights take what the config and
    tokenizer leave, so a stand-in can match the `modelSize` a cache declares byte for byte."""
    if total_bytes < DEMO_MIN_SIZE:
        raise ValueError(
            f"a demo model needs at least {DEMO_MIN_SIZE} bytes (config, tokenizer and a "
            f"safetensors header), got {total_bytes}"
        )
    return {
        "config.json": _DEMO_CONFIG,
        "tokenizer.json": _DEMO_TOKENIZER,
        "model.safetensors": total_bytes - _DEMO_CONFIG - _DEMO_TOKENIZER,
    }


def _checked_parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"synthetic file path must be relative and stay inside the repo: {relative!r}"
        )
    return parts


def _random_blocks(size: int, rng: random.Random) -> Iterator[bytes | memoryview]:
    if size <= _BLOCK:
        yield rng.randbytes(size)
        return
    base = rng.randbytes(_BLOCK)
    # Shuffling a fresh table per block costs ~10% of the budget; composing three of 16
    # tables drawn once gives 4096 permutations for a few microseconds each.
    tables = []
    for _ in range(16):
        table = list(range(256))
        rng.shuffle(table)
        tables.append(bytes(table))
    remaining = size
    while remaining > 0:
        first, second, third = rng.choices(tables, k=3)
        block = memoryview(base.translate(first.translate(second).translate(third)))
        rotation = rng.randrange(_BLOCK)
        wanted = min(remaining, _BLOCK)
        head = block[rotation : rotation + wanted]
        yield head
        if len(head) < wanted:
            yield block[: wanted - len(head)]
        remaining -= wanted


def _json_document(size: int, rng: random.Random) -> bytes | None:
    """A JSON object of exactly `size` bytes, or None when `size` is too small to hold one."""
    fields = dict(_JSON_FIELDS)
    fields["_padding"] = ""
    empty = json.dumps(fields, indent=2).encode() + b"\n"
    room = size - len(empty)
    if room < 0:
        return None
    fields["_padding"] = base64.b64encode(rng.randbytes(room))[:room].decode()
    document = json.dumps(fields, indent=2).encode() + b"\n"
    assert len(document) == size, (len(document), size)
    return document


def _safetensors_header(size: int) -> bytes | None:
    """A safetensors prefix whose single U8 tensor fills the rest of a `size`-byte file."""
    data_length = size - 8 - _SAFETENSORS_HEADER
    if data_length < 0:
        return None
    meta = {"__metadata__": {"format": "pt"}, "weight": _tensor_info(data_length)}
    text = json.dumps(meta, separators=(",", ":")).encode()
    if len(text) > _SAFETENSORS_HEADER:
        return None
    return struct.pack("<Q", _SAFETENSORS_HEADER) + text.ljust(_SAFETENSORS_HEADER)


def _tensor_info(length: int) -> dict[str, object]:
    return {"dtype": "U8", "shape": [length], "data_offsets": [0, length]}
