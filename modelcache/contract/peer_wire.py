"""What agents of one node group say to each other: chunk maps and chunk bytes.

Two calls, both with ``Authorization: Bearer <peerToken>`` (the group's token from the desired
list; a token of another group is refused):
- ``GET /v1/peer/models/{storageKey}/chunks?from=N&wait=SECONDS``: the serving node's `ChunkMap`
  of that model: the listing fingerprint and chunk size it pulls with, the verified chunks it holds
  from position N of its append-only record log on (``next`` is where the following call starts),
  and the chunks it is fetching from the origin right now. Answers at once when there are records
  past N, otherwise waits up to SECONDS (long poll). 404 when the node neither holds nor pulls it.
- ``GET /v1/peer/models/{storageKey}/files/{fileIndex}`` with ``Range: bytes=A-B``: the bytes of
  one held chunk (206). 416 when the range is not inside held chunks; 503 with Retry-After when the
  node's upload slots are busy.

Each record carries the sha256 of the chunk as first fetched from the origin by whichever node
did; a node that copies a chunk from a peer checks the bytes against it, then serves it under
the same digest. The whole-file digest from the source is checked as always before a publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from modelcache.contract.objects import FieldError

CHUNKS_PATH: Final = "/v1/peer/models/{key}/chunks"
FILE_PATH: Final = "/v1/peer/models/{key}/files/{index}"
_HEX = frozenset("0123456789abcdef")


class RawChunkMap(TypedDict):
    fingerprint: str
    chunkSize: int
    complete: bool
    next: int
    records: list[list[int | str]]
    """``[fileIndex, chunkIndex, sha256hex]``"""
    inflight: list[list[int]]
    """``[fileIndex, chunkIndex, bytesDone]``: being fetched from the origin by the serving node"""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    file_index: int
    chunk_index: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ChunkMap:
    fingerprint: str
    chunk_size: int
    complete: bool
    next: int
    records: tuple[ChunkRecord, ...]
    inflight: Mapping[tuple[int, int], int]
    """(file, chunk) -> bytes fetched so far"""


def chunk_map_to_raw(chunk_map: ChunkMap) -> RawChunkMap:
    return {
        "fingerprint": chunk_map.fingerprint,
        "chunkSize": chunk_map.chunk_size,
        "complete": chunk_map.complete,
        "next": chunk_map.next,
        "records": [[r.file_index, r.chunk_index, r.sha256] for r in chunk_map.records],
        "inflight": [[f, c, done] for (f, c), done in chunk_map.inflight.items()],
    }


def _index(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(field, "must be a non-negative integer")
    return value


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def parse_chunk_map(raw: object) -> ChunkMap:
    if not isinstance(raw, Mapping):
        raise FieldError("body", "must be a JSON object")
    body: Mapping[str, Any] = raw
    fingerprint = body.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise FieldError("fingerprint", "must be the listing's fingerprint")
    chunk_size = _index(body.get("chunkSize"), "chunkSize")
    if chunk_size == 0:
        raise FieldError("chunkSize", "must be positive")
    records = body.get("records", [])
    if not isinstance(records, list):
        raise FieldError("records", "must be a list")
    parsed: list[ChunkRecord] = []
    for i, record in enumerate(records):
        if not isinstance(record, list) or len(record) != 3 or not is_sha256_hex(record[2]):
            raise FieldError(f"records[{i}]", "must be [fileIndex, chunkIndex, sha256hex]")
        parsed.append(
            ChunkRecord(
                _index(record[0], f"records[{i}][0]"),
                _index(record[1], f"records[{i}][1]"),
                record[2],
            )
        )
    inflight = body.get("inflight", [])
    if not isinstance(inflight, list):
        raise FieldError("inflight", "must be a list")
    fetching: dict[tuple[int, int], int] = {}
    for i, item in enumerate(inflight):
        if not isinstance(item, list) or len(item) != 3:
            raise FieldError(f"inflight[{i}]", "must be [fileIndex, chunkIndex, bytesDone]")
        key = (_index(item[0], f"inflight[{i}][0]"), _index(item[1], f"inflight[{i}][1]"))
        fetching[key] = _index(item[2], f"inflight[{i}][2]")
    complete = body.get("complete", False)
    if not isinstance(complete, bool):
        raise FieldError("complete", "must be true or false")
    return ChunkMap(
        fingerprint=fingerprint,
        chunk_size=chunk_size,
        complete=complete,
        next=_index(body.get("next", 0), "next"),
        records=tuple(parsed),
        inflight=fetching,
    )
