"""`modelcache`: the command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from modelcache.cli.apply_command import add_apply_parser
from modelcache.cli.objects_command import add_delete_parser, add_get_parser
from modelcache.cli.pull_command import add_pull_parser
from modelcache.contract.errors import ModelCacheError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelcache", description="Node-local model cache for GPU clusters."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_pull_parser(subparsers)
    add_apply_parser(subparsers)
    add_get_parser(subparsers)
    add_delete_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run_until_signal(args.run(args))
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"modelcache: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModelCacheError as e:
        print(f"modelcache: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("modelcache: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_until_signal(coro: Coroutine[Any, Any, int]) -> int:
    """Run the command; SIGTERM cancels it like Ctrl-C does, so cleanup code always runs."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(coro, name="modelcache-command")
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return runner.run(_await(task))


async def _await(task: asyncio.Task[int]) -> int:
    return await task


if __name__ == "__main__":
    sys.exit(main())
