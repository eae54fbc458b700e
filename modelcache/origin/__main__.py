"""`python -m modelcache.origin`: serve model folders the way the Hugging Face Hub would.

    python -m modelcache.origin --generate-demo /tmp/demo --ready-file /tmp/origin.url
    python -m modelcache.origin --generate-demo /tmp/d --demo-repo-id acme/tiny --demo-size 9000000
    python -m modelcache.origin --repo acme/llama=/models/llama --token s3cret --gated acme/llama

Prints `origin listening on http://HOST:PORT` once it accepts connections and runs until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .repos import load_file, load_repo
from .server import Origin, start_origin
from .synthetic import DEMO_REPO_ID, DEMO_SIZE, demo_files, write_synthetic_repo


@dataclass(frozen=True)
class OriginSettings:
    """What to serve and how, built once from the command line."""

    repos: tuple[tuple[str, Path], ...]
    plain_files: tuple[tuple[str, Path], ...]
    demo_dir: Path | None
    demo_repo_id: str
    demo_size: int
    host: str
    port: int
    rate_per_connection: int | None
    rate_total: int | None
    xet: bool
    tokens: frozenset[str]
    gated: frozenset[str]
    ready_file: Path | None


def main(argv: Sequence[str] | None = None) -> int:
    settings = _parse(argv)
    try:
        asyncio.run(_serve(settings))
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"origin: {e}", file=sys.stderr)
        return 2
    return 0


def _positive_rate(parser: argparse.ArgumentParser, flag: str, rate: int | None) -> int | None:
    if rate is not None and rate < 64 * 1024:
        parser.error(f"{flag} must be at least 65536 bytes/s, got {rate}")
    return rate


def _parse(argv: Sequence[str] | None) -> OriginSettings:
    parser = argparse.ArgumentParser(
        prog="python -m modelcache.origin",
        description="Serve model folders over the Hugging Face Hub HTTP protocol.",
    )
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/MODEL=DIR")
    parser.add_argument(
        "--generate-demo",
        type=Path,
        metavar="DIR",
        help="write a synthetic demo model into DIR unless it is there, and serve it",
    )
    parser.add_argument(
        "--demo-repo-id",
        default=DEMO_REPO_ID,
        metavar="OWNER/MODEL",
        help=f"the id the demo model is served as (default {DEMO_REPO_ID})",
    )
    parser.add_argument(
        "--demo-size",
        type=int,
        default=DEMO_SIZE,
        metavar="BYTES",
        help=f"the demo model's total size (default {DEMO_SIZE}, 40 MiB)",
    )
    parser.add_argument(
        "--file", action="append", default=[], metavar="NAME=PATH", help="serve at /files/NAME"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate-per-connection", type=int, metavar="BYTES", help="bytes/s cap")
    parser.add_argument(
        "--rate-total", type=int, metavar="BYTES", help="bytes/s cap over all connections"
    )
    parser.add_argument("--xet", action="store_true", help="advertise Xet hashes (data stays HTTP)")
    parser.add_argument(
        "--token", action="append", default=[], help="a bearer token gated repos accept"
    )
    parser.add_argument(
        "--gated", action="append", default=[], metavar="OWNER/MODEL", help="require a token"
    )
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once serving")
    args = parser.parse_args(argv)

    repos = tuple(_pair(parser, "--repo", value) for value in args.repo)
    plain_files = tuple(_pair(parser, "--file", value) for value in args.file)
    if not repos and not plain_files and args.generate_demo is None:
        parser.error("nothing to serve: give --repo, --file or --generate-demo")
    rate = args.rate_per_connection
    if rate is not None and rate <= 0:
        parser.error(f"--rate-per-connection must be > 0 bytes/s, got {rate}")
    if args.demo_repo_id.count("/") != 1 or "" in args.demo_repo_id.split("/"):
        parser.error(f"--demo-repo-id wants OWNER/MODEL, got {args.demo_repo_id!r}")
    try:
        demo_files(args.demo_size)
    except ValueError as e:
        parser.error(f"--demo-size: {e}")
    demo_id = {args.demo_repo_id} if args.generate_demo else set()
    if demo_id & {repo_id for repo_id, _ in repos}:
        parser.error(f"--repo and --demo-repo-id both serve {args.demo_repo_id}: rename one")
    known = {repo_id for repo_id, _ in repos} | demo_id
    unknown = set(args.gated) - known
    if unknown:
        parser.error(f"--gated names repos that are not served: {', '.join(sorted(unknown))}")
    if args.gated and not args.token:
        parser.error("--gated repos need at least one --token to be reachable")
    return OriginSettings(
        repos=repos,
        plain_files=plain_files,
        demo_dir=args.generate_demo,
        demo_repo_id=args.demo_repo_id,
        demo_size=args.demo_size,
        host=args.host,
        port=args.port,
        rate_per_connection=rate,
        rate_total=_positive_rate(parser, "--rate-total", args.rate_total),
        xet=args.xet,
        tokens=frozenset(args.token),
        gated=frozenset(args.gated),
        ready_file=args.ready_file,
    )


def _pair(parser: argparse.ArgumentParser, flag: str, value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        parser.error(f"{flag} wants NAME=PATH, got {value!r}")
    if flag == "--repo" and name.count("/") != 1:
        parser.error(f"--repo wants OWNER/MODEL=DIR, got {value!r}")
    return name, Path(path)


async def _serve(settings: OriginSettings) -> None:
    origin = await asyncio.to_thread(_build_origin, settings)
    runner, url = await start_origin(origin, settings.host, settings.port)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if settings.ready_file is not None:
            await asyncio.to_thread(_write_atomically, settings.ready_file, url + "\n")
        print(f"origin listening on {url}", flush=True)
        for repo in origin.repos.values():
            print(f"  {repo.repo_id}@{repo.commit_sha[:12]}: {len(repo.files)} files", flush=True)
        await stop.wait()
        print("origin stopping", flush=True)
    finally:
        await runner.cleanup()


def _build_origin(settings: OriginSettings) -> Origin:
    """Hash everything to serve (blocking: runs in a thread)."""
    origin = Origin(
        tokens=set(settings.tokens),
        per_connection_rate=settings.rate_per_connection,
        total_rate=settings.rate_total,
    )
    repos = list(settings.repos)
    if settings.demo_dir is not None:
        _ensure_demo(settings.demo_dir, demo_files(settings.demo_size))
        repos.append((settings.demo_repo_id, settings.demo_dir))
    for repo_id, directory in repos:
        origin.add_repo(
            load_repo(repo_id, directory, gated=repo_id in settings.gated, xet=settings.xet)
        )
    for name, path in settings.plain_files:
        if not path.is_file():
            raise FileNotFoundError(f"--file {name}={path}: no such file")
        origin.plain_files[name] = load_file(name, path)
    return origin


def _ensure_demo(directory: Path, wanted: dict[str, int]) -> None:
    present = all(
        (directory / path).is_file() and (directory / path).stat().st_size == size
        for path, size in wanted.items()
    )
    if not present:
        print(f"writing the demo model into {directory}", flush=True)
        write_synthetic_repo(directory, wanted)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
