"""`modelcache pull URI DEST`: the engine from a shell."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from modelcache.cli.progress_display import ProgressDisplay
from modelcache.contract.errors import UsageError
from modelcache.contract.quantities import format_bytes, parse_bytes, parse_rate
from modelcache.contract.uris import parse_source_uri
from modelcache.pulling import PullResult, PullSettings, SourceCredentials, pull


def add_pull_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "pull",
        help="pull a model into a local folder (resumable, verified, atomic)",
        description=(
            "Pull every file of a model into DEST. DEST appears complete or not at all; an "
            "interrupted pull resumes when run again; a finished one is verified and left alone. "
            "Each flag can also be set as MODELCACHE_<FLAG> (e.g. MODELCACHE_CONCURRENCY)."
        ),
    )
    p.add_argument(
        "uri", help="hf://OWNER/MODEL[:REVISION], s3://BUCKET/PREFIX or https://HOST/PATH"
    )
    p.add_argument("dest", type=Path, help="model folder to create or update")
    p.add_argument("--revision", help="hf:// branch, tag or commit (default: main)")
    p.add_argument("--concurrency", type=int, help="ranged requests in flight (default 16)")
    p.add_argument("--chunk-size", help="bytes per ranged request, e.g. 32Mi (default 4Mi)")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="pull only files matching GLOB (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files matching GLOB (repeatable)",
    )
    p.add_argument("--max-bandwidth", metavar="RATE", help="cap on bytes/s, e.g. 100MB/s")
    p.add_argument("--min-free", metavar="SIZE", help="free space to keep on DEST's disk (1Gi)")
    p.add_argument("--max-files", type=int, help="refuse listings with more files (10000)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash an already published model instead of checking sizes only",
    )
    p.set_defaults(run=run_pull)


def pull_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> PullSettings:
    """Flags win over MODELCACHE_* variables, which win over defaults."""

    def pick(flag: object, env: str) -> str | None:
        if flag is not None:
            return str(flag)
        return environ.get(f"MODELCACHE_{env}") or None

    def as_int(text: str, what: str) -> int:
        try:
            return int(text)
        except ValueError as e:
            raise UsageError(f"{what} must be a whole number, not {text!r}") from e

    defaults = PullSettings()
    concurrency = pick(args.concurrency, "CONCURRENCY")
    chunk = pick(args.chunk_size, "CHUNK_SIZE")
    bandwidth = pick(args.max_bandwidth, "MAX_BANDWIDTH")
    min_free = pick(args.min_free, "MIN_FREE")
    max_files = pick(args.max_files, "MAX_FILES")
    try:
        return PullSettings(
            concurrency=as_int(concurrency, "--concurrency")
            if concurrency
            else defaults.concurrency,
            chunk_size=parse_bytes(chunk, what="--chunk-size") if chunk else defaults.chunk_size,
            max_bandwidth=parse_rate(bandwidth, what="--max-bandwidth") if bandwidth else None,
            min_free_bytes=parse_bytes(min_free, what="--min-free")
            if min_free
            else defaults.min_free_bytes,
            max_files=as_int(max_files, "--max-files") if max_files else defaults.max_files,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
        )
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(str(e)) from e


async def run_pull(args: argparse.Namespace) -> int:
    environ = os.environ
    settings = pull_settings(args, environ)
    source = parse_source_uri(args.uri, revision=args.revision)
    display = ProgressDisplay(sys.stderr)
    try:
        result = await pull(
            args.uri,
            args.dest,
            settings=settings,
            credentials=SourceCredentials.from_environ(environ),
            source=source,
            progress=display,
            verify_digests=args.verify,
        )
    finally:
        display.close()
    print(summary_line(result))
    return 0


def summary_line(result: PullResult) -> str:
    size = format_bytes(result.total_bytes)
    revision = result.revision[:12]
    if result.up_to_date:
        return (
            f"up to date: {result.dest} holds {result.source} (revision {revision}), "
            f"{result.files} files, {size}, verified in {result.seconds:.1f} s"
        )
    rate = result.fetched_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    resumed = result.total_bytes - result.fetched_bytes
    resumed_note = f" ({format_bytes(resumed)} resumed)" if resumed > 0 else ""
    return (
        f"pulled {result.source} (revision {revision}) into {result.dest}: {result.files} files, "
        f"{size}{resumed_note}, {format_bytes(result.fetched_bytes)} fetched in "
        f"{result.seconds:.1f} s, {rate:.1f} MB/s"
    )
