"""Peer-to-peer benchmark: N agents of one node group pull one model through a thin origin.

    .venv/bin/python -m bench.p2p_bench [--agents 16] [--size 2G] [--shards 4]
        [--origin-rate 100M] [--modes single,peers,origin-only] [--repeat 1] [--workdir DIR]

Builds a synthetic repo (--shards safetensors files adding up to --size, plus small json files)
and serves it from the Hub-compatible origin, in this process (so its byte counters are read
directly), capped at --origin-rate bytes per second over all connections together: a model
registry behind a thin pipe. Each run starts real processes: `modelcache-coordinator` on the
embedded store and agents (`modelcache-agent`, nodes p2p-0..N-1 in group a100, each with its own
cache root and port), applies a LocalModelNodeGroup and a LocalModelCache, and measures:

- single: one agent alone: seconds from PUT to ModelDownloaded (as the coordinator sees it);
- peers: N agents together, peer fetching on (the default): bytes the origin sent, seconds until
  every node is NodeDownloaded in the cache's status;
- origin-only: the same with the cache annotated modelcache.io/peer-fetch: "false".

Targets (issue 6): peers: origin bytes <= 1.1x the model; time to all <= 2x the single node's.
Figures are medians over --repeat runs; a missed target prints MISSED and still exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import harness
from bench.harness import AGENT, COORDINATOR
from bench.measured_revision import measured_revision
from modelcache.contract.objects import PEER_FETCH_ANNOTATION
from modelcache.contract.quantities import format_bytes, parse_quantity
from modelcache.origin.repos import load_repo
from modelcache.origin.server import Origin, start_origin

REPO_ID = "bench/p2p-model"
SOURCE_URI = f"hf://{REPO_ID}"
CACHE_NAME = "bench-p2p-model"
GROUP = "a100"
MODES = ("single", "peers", "origin-only")
ORIGIN_BYTES_TARGET = 1.1
TIME_RATIO_TARGET = 2.0


class OriginThread:
    """The origin on its own event loop in a thread of this process."""

    def __init__(self, repo_dir: Path, rate: int) -> None:
        self.origin = Origin(total_rate=rate)
        self.origin.add_repo(load_repo(REPO_ID, repo_dir))
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self.url = await start_origin(self.origin, shutdown_timeout=1.0)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> OriginThread:
        self._thread.start()
        self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def bytes_sent(self) -> int:
        return self.origin.stats.body_bytes_sent


def main() -> int:
    args = _parse()
    signal.signal(signal.SIGTERM, harness.exit_on_sigterm)
    created = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="modelcache-p2p-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = harness.repo_files(args.size, args.shards)
    total = sum(files.values())
    needed = total * (args.agents + 1) + 2**30
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise SystemExit(
            f"{format_bytes(free)} free under {workdir}, {format_bytes(needed)} needed"
        )
    print(f"agents at {measured_revision()}")
    print(
        f"p2p bench: {args.agents} agents, model {format_bytes(total)} ({total:,} bytes) in "
        f"{len(files)} files, origin capped at {args.origin_rate / 1e6:.0f} MB/s, "
        f"{psutil.cpu_count()} cores, workdir {workdir}",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes}
    try:
        repo_dir = harness.ensure_repo(workdir, files)
        with OriginThread(repo_dir, args.origin_rate) as origin:
            for number in range(1, args.repeat + 1):
                for mode in args.modes:
                    agents = 1 if mode == "single" else args.agents
                    figures = _run(workdir, origin, mode, agents, total)
                    print(f"run {number} {mode}: {_shown(figures, total)}", flush=True)
                    runs[mode].append(figures)
        _report(runs, total)
    finally:
        for made in workdir.glob("run-*"):
            shutil.rmtree(made, ignore_errors=True)
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--size", type=_bytes, default=_bytes("2G"), help="model bytes (default 2G)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--origin-rate", type=_bytes, default=_bytes("100M"), help="bytes/s")
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    unknown = set(args.modes) - set(MODES)
    if unknown or args.agents < 2 or args.repeat < 1:
        p.error(f"--modes from {', '.join(MODES)}; --agents >= 2; --repeat >= 1")
    return args


def _bytes(text: str) -> int:
    return int(parse_quantity(text))


def _run(
    workdir: Path, origin: OriginThread, mode: str, agents: int, total: int
) -> dict[str, float]:
    run_dir = workdir / f"run-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    harness.settle_disk()
    port = harness.free_port()
    coordinator = f"http://127.0.0.1:{port}"
    cmd = [
        COORDINATOR,
        f"--store=sqlite:{run_dir / 'coordinator.db'}",
        f"--listen=127.0.0.1:{port}",
    ]
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(harness.process(cmd, run_dir / "coordinator.log"))
        harness.wait_until(
            "the coordinator",
            lambda: harness.get(f"{coordinator}/readyz")[0] == 200,
            proc,
            run_dir / "coordinator.log",
            60,
        )
        urls = list(stack.enter_context(_agents(run_dir, coordinator, origin.url, agents)))
        _apply(coordinator, total, peer_fetch=mode != "origin-only")
        before, started = origin.bytes_sent, time.monotonic()
        seconds = _until_all_downloaded(coordinator, agents, limit=max(900.0, total / 1e6))
        figures = {"seconds": seconds, "origin_bytes": float(origin.bytes_sent - before)}
        figures["peer_bytes"] = float(sum(_metric(u, 'source="peer"') for u in urls))
        figures["wall_s"] = time.monotonic() - started
    shutil.rmtree(run_dir, ignore_errors=True)
    return figures


@contextlib.contextmanager
def _agents(run_dir: Path, coordinator: str, origin: str, count: int) -> Iterator[list[str]]:
    env = {**os.environ, "HF_ENDPOINT": origin, "HF_HUB_DISABLE_XET": "1"}
    urls = []
    with contextlib.ExitStack() as stack:
        procs = []
        for i in range(count):
            port = harness.free_port()
            cache = run_dir / f"node-{i}"
            cache.mkdir()
            cmd = [AGENT, f"--coordinator={coordinator}", f"--node-name=p2p-{i}"]
            cmd += [f"--node-group={GROUP}", f"--cache-root={cache}", "--min-free=0"]
            cmd += [f"--listen=127.0.0.1:{port}"]
            log = run_dir / f"agent-{i}.log"
            procs.append((stack.enter_context(harness.process(cmd, log, env=env)), log))
            urls.append(f"http://127.0.0.1:{port}")
        for url, (proc, log) in zip(urls, procs, strict=True):
            harness.wait_until(
                f"agent {url} to register",
                functools.partial(harness.registered, url),
                proc,
                log,
                60,
            )
        yield urls


def _apply(coordinator: str, total: int, *, peer_fetch: bool) -> None:
    harness.put_node_group(coordinator, GROUP, "100Ti")
    annotations = {} if peer_fetch else {PEER_FETCH_ANNOTATION: "false"}
    harness.put_cache(coordinator, CACHE_NAME, SOURCE_URI, total, GROUP, annotations)


def _until_all_downloaded(coordinator: str, count: int, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        code, body = harness.get(f"{coordinator}/v1/localmodelcaches/{CACHE_NAME}")
        status: dict[str, Any] = (body or {}).get("status") or {} if code == 200 else {}
        states = (status.get("nodeStatus") or {}).values()
        if "NodeDownloadError" in states:
            raise SystemExit(f"a node failed the pull: {status}")
        if sum(s == "NodeDownloaded" for s in states) == count:
            return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"not every node downloaded the model within {limit:.0f} s")


def _metric(agent: str, selector: str) -> float:
    """Sum of modelcache_agent_pulled_bytes_total samples matching `selector` on one agent."""
    try:
        with harness.HTTP.open(f"{agent}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return float("nan")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelcache_agent_pulled_bytes_total{") and selector in line
    )


def _shown(figures: dict[str, float], total: int) -> str:
    return (
        f"{figures['seconds']:.1f} s to all downloaded, origin sent "
        f"{figures['origin_bytes'] / total:.2f}x the model, peers gave "
        f"{figures['peer_bytes'] / total:.2f}x"
    )


def _report(runs: dict[str, list[dict[str, float]]], total: int) -> None:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode]) if runs.get(mode) else float("nan")

    print("\nmode          time to all (s)   origin bytes / model   peer bytes / model")
    for mode in runs:
        print(
            f"{mode:<13} {median(mode, 'seconds'):>15.1f}   "
            f"{median(mode, 'origin_bytes') / total:>20.2f}   "
            f"{median(mode, 'peer_bytes') / total:>18.2f}"
        )
    if "peers" in runs:
        ratio = median("peers", "origin_bytes") / total
        verdict = "met" if ratio <= ORIGIN_BYTES_TARGET else "MISSED"
        print(f"peers: origin bytes {ratio:.2f}x the model (target <= 1.1x): {verdict}")
    if "peers" in runs and "single" in runs:
        ratio = median("peers", "seconds") / median("single", "seconds")
        verdict = "met" if ratio <= TIME_RATIO_TARGET else "MISSED"
        print(f"peers: time to all {ratio:.2f}x one node alone (target <= 2x): {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
