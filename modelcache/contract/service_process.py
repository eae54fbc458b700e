"""What both long-running services (`modelcache-agent`, `modelcache-coordinator`) do the same way
as processes: where they listen, and how they run until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from modelcache.contract.errors import ModelCacheError, UsageError


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an empty host means every interface); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--listen {text!r}: write HOST:PORT, e.g. 0.0.0.0:8080")
    return host or "0.0.0.0", int(port)


def run_until_signalled(
    service: Coroutine[Any, Any, None],
    prog: str,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run `service` until it fails (exit 1, message on stderr) or SIGTERM/SIGINT cancel it
    (exit 0: the service's own shutdown phases run inside the cancellation)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()
        task = loop.create_task(service, name=prog)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            runner.run(_await(task))
        except asyncio.CancelledError:
            return 0
        except ModelCacheError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 1
    return 0


async def _await(task: asyncio.Task[None]) -> None:
    await task
