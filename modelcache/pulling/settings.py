"""Tuning and credentials for pulls: frozen, built once by `main`, passed explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class PullSettings:
    """How a pull moves bytes. Defaults were chosen by measurement (bench/pull_bench.py)."""

    chunk_size: int = 4 * MiB
    """Bytes per ranged request. Big enough to amortise a request; small enough that the blocks
    a file's other connections write ahead of its hashing frontier fit `hash_hold` (16
    connections on 4 files at 32Mi read 2.0 GB of a 2 GiB pull back from disk to hash it, at 4Mi
    none). On a far origin (tens of ms to the first byte) a bigger chunk pays off."""
    concurrency: int = 16
    """Ranged requests in flight at once, across all files of the pull."""
    max_bandwidth: int | None = None
    """Bytes per second over the whole pull; None for no cap."""
    include: tuple[str, ...] = ()
    """Glob patterns (fnmatch, on repo-relative paths): pull only files that match one."""
    exclude: tuple[str, ...] = ()
    """Glob patterns: skip files that match one."""
    min_free_bytes: int = 1 * GiB
    """Free space that must remain on the destination filesystem after the pull."""
    max_files: int = 10_000
    """A listing with more files than this is refused before anything is written."""
    attempts_per_chunk: int = 8
    """Tries per ranged request before the pull fails with a temporary error."""
    retry_base_delay: float = 0.5
    """First backoff delay in seconds; it doubles per attempt, with full jitter."""
    retry_max_delay: float = 30.0
    """Longest single backoff (and the longest Retry-After we honour)."""
    refetches_per_file: int = 2
    """Whole-file re-downloads after a digest mismatch before the pull fails."""
    connect_timeout: float = 30.0
    stall_timeout: float = 60.0
    """Seconds without a single body byte before a request counts as stalled."""
    write_block: int = 2 * MiB
    """Body bytes received before one positional write: the size of each fetch thread's buffer
    and of the blocks hashers hold."""
    hash_hold: int = 32 * MiB
    """Memory for blocks written ahead of their file's hashing frontier, kept until it reaches
    them; beyond it, such blocks are read back from disk to be hashed. About half of
    `concurrency` x `chunk_size` covers what runs ahead (measured at 16 x 4Mi: 32Mi read back
    nothing of a 2 GiB pull and peaked at 120 MB RSS; 16Mi read back 1.5 GB)."""
    direct_io: bool = True
    """Write (and read back for hashing) with O_DIRECT where the filesystem allows it."""
    write_threads: int = 4
    """Threads writing (and hashing) chunks copied from peers, for the whole pull; origin chunks
    are written by the fetch threads that receive them."""
    peer_stall_timeout: float = 5.0
    """Seconds a peer may take to connect or to send the next bytes before its chunk is taken
    elsewhere (peers are near: a slow one is better skipped than waited for)."""
    peer_min_rate: float = 1 * MiB
    """Bytes per second a peer must sustain over a chunk, or the chunk is taken elsewhere (low:
    a busy node's uploads share its CPU and disk, and a chunk given up is work thrown away)."""
    peer_concurrency: int = 6
    """Chunk copies from peers in flight at once for one pull: a few streams fill a LAN link;
    more only split the serving nodes' CPU and disks into slower streams."""
    peer_settle: float = 3.0
    """Longest wait of a pull, before its first request to the origin, for its listed peers to
    start the same pull (or prove unreachable): nodes that start together then agree on who
    fetches which chunk. A pull without peers does not wait."""
    peers_per_chunk_request: int = 4
    """Requests in flight to one peer at a time."""

    def __post_init__(self) -> None:
        if self.chunk_size < 64 * 1024:
            raise ValueError("chunk size must be at least 64Ki")
        if not 1 <= self.concurrency <= 256:
            raise ValueError("concurrency must be between 1 and 256")
        if self.max_bandwidth is not None and self.max_bandwidth < 64 * 1024:
            raise ValueError("max bandwidth must be at least 64Ki bytes per second")
        if self.attempts_per_chunk < 1 or self.refetches_per_file < 0:
            raise ValueError("attempts must be >= 1 and refetches >= 0")


@dataclass(frozen=True, slots=True)
class SourceCredentials:
    """Where the sources are and how to authenticate; read from the environment by `main`."""

    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_token: str | None = field(default=None, repr=False)
    aws_endpoint_url: str | None = None
    aws_region: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SourceCredentials:
        """HF_ENDPOINT / HF_TOKEN, AWS_ENDPOINT_URL(_S3) / AWS_REGION (AWS_DEFAULT_REGION).

        AWS keys and session tokens are left to botocore's credential chain, which also covers
        web-identity (IRSA) and instance profiles.
        """
        return cls(
            hf_endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/"),
            hf_token=environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN") or None,
            aws_endpoint_url=environ.get("AWS_ENDPOINT_URL_S3")
            or environ.get("AWS_ENDPOINT_URL")
            or None,
            aws_region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        )
