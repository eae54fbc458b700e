"""`modelcache-agent`: keeps one node's model cache (see README for flags and endpoints)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from modelcache.agent.runtime import serve_until_cancelled
from modelcache.agent.settings import settings_from
from modelcache.contract.errors import ModelCacheError, UsageError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, verbose = settings_from(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"modelcache-agent: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {settings.node_name} %(name)s: %(message)s",
    )
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(serve_until_cancelled(settings), name="modelcache-agent")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            runner.run(_await(task))
        except asyncio.CancelledError:
            return 0
        except ModelCacheError as e:
            print(f"modelcache-agent: error: {e}", file=sys.stderr)
            return 1
    return 0


async def _await(task: asyncio.Task[None]) -> None:
    await task


if __name__ == "__main__":
    sys.exit(main())
