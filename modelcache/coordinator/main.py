"""`modelcache-coordinator`: the central service (see README for flags and REST)."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterator, Sequence

import uvloop

from modelcache.contract.errors import UsageError
from modelcache.contract.service_process import run_until_signalled
from modelcache.coordinator.runtime import serve_until_cancelled
from modelcache.coordinator.settings import settings_from


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, verbose = settings_from(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"modelcache-coordinator: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with _rare_full_collections():
        # uvloop: asyncio's loop and transports in C. The coordinator answered 2,629 reports/s on
        # it against 2,055 on the default loop (bench.coordinator_bench); pulls (the agent, the
        # CLI) measured no faster, so they stay on the default loop.
        return run_until_signalled(
            serve_until_cancelled(settings), "modelcache-coordinator", uvloop.new_event_loop
        )


# Young collections after 10,000 new objects (not 700), full ones after 100 of those (not ~10).
GC_THRESHOLDS = (10_000, 5, 100)


@contextlib.contextmanager
def _rare_full_collections() -> Iterator[None]:
    """At 10,000 nodes the coordinator holds some 250,000 objects the cyclic collector tracks (the
    nodes' model reports, mostly), and every agent report replaces a few of them. With Python's
    default thresholds that ran a full collection every 2-3 s under load, each stopping the event
    loop for 100-200 ms: the p99 of every request. Our data is acyclic and freed by reference
    counting (under load the collector found ~50 cyclic objects a second), so collect rarely."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


if __name__ == "__main__":
    sys.exit(main())
