"""`python -m modelcache.devrun` (`make run`): origin, coordinator and three agents, no cluster.

Exit 0 after a clean stop (Ctrl-C or SIGTERM once ready, or `--exit-when-ready`), 1 when a part
failed or was not ready in time, 2 on bad usage, 130 when interrupted before everything was ready.
A second Ctrl-C while stopping kills what is left at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from modelcache.contract.errors import ModelCacheError, UsageError
from modelcache.contract.quantities import parse_rate
from modelcache.devrun.launching import COORDINATOR_PORT, RATE_PER_CONNECTION, DevRunSettings
from modelcache.devrun.running import PROG, DevRun


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a local Hub origin, a coordinator and three agents (gpu-a100-0, "
        "gpu-a100-1 in group a100; gpu-h100-0 in group h100) under RUN_DIR, apply the example "
        "files, and show the model arriving on every node. Runs until Ctrl-C.",
    )
    parser.add_argument("--run-dir", type=Path, default=Path(".run"), help="default ./.run")
    parser.add_argument(
        "--examples", type=Path, default=Path("examples"), help="YAML to apply (default examples)"
    )
    parser.add_argument(
        "--coordinator-port",
        type=int,
        default=COORDINATOR_PORT,
        help=f"default {COORDINATOR_PORT} (another one if taken); 0 picks any free port",
    )
    parser.add_argument(
        "--rate-per-connection",
        default=f"{RATE_PER_CONNECTION // 1024 // 1024}Mi",
        metavar="RATE",
        help="cap of each origin connection, e.g. 6Mi (default), 100Mi/s",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds until ready (default 120)"
    )
    parser.add_argument(
        "--exit-when-ready",
        action="store_true",
        help="stop everything once every node holds the model (for tests and CI)",
    )
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the last run's coordinator database and agents' caches (default: start empty)",
    )
    return parser


def settings_from(argv: Sequence[str]) -> DevRunSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.coordinator_port < 65536:
        parser.error(f"--coordinator-port {args.coordinator_port} is not a TCP port")
    if args.ready_timeout <= 0:
        parser.error("--ready-timeout must be positive")
    try:
        rate = parse_rate(args.rate_per_connection, what="--rate-per-connection")
    except UsageError as e:
        parser.error(str(e))
    return DevRunSettings(
        run_dir=args.run_dir,
        examples=args.examples,
        coordinator_port=args.coordinator_port,
        rate_per_connection=rate,
        ready_timeout=args.ready_timeout,
        exit_when_ready=args.exit_when_ready,
        keep_state=args.keep_state,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(sys.argv[1:] if argv is None else argv)  # exits 2 on bad usage
    devrun = DevRun(settings)
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(devrun.run(), name="devrun")
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                task.cancel()
            else:
                print("killing what is left", file=sys.stderr, flush=True)
                devrun.children.kill_all()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        try:
            return runner.run(_await(task))
        except asyncio.CancelledError:
            return 0 if devrun.ready else 130
        except UsageError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        except ModelCacheError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1


async def _await(task: asyncio.Task[int]) -> int:
    return await task


if __name__ == "__main__":
    sys.exit(main())
