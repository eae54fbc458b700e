"""Coordinator load benchmark: one coordinator (embedded store), thousands of simulated agents.

    .venv/bin/python -m bench.coordinator_bench [--agents 10000] [--groups 4] [--caches 20]
        [--duration 20] [--repeat 1] [--long-polls 1000] [--profile]

Each run starts `modelcache-coordinator --store sqlite:WORKDIR/bench.db` on a free port, creates
the node groups (a100, h100, l40s, t4, ...) and the caches (cache i in group i%G, even ones also in
the next group), and starts `bench.coordinator_load` processes whose agents register and read their
desired lists. Then, with --long-polls agents parked in a desired long poll:

- load: for --duration seconds the agents send status reports (models going Pending ->
  Downloading with growing bytesDone -> Downloaded, one model after another) as fast as the
  coordinator answers them (or at --rate per second, open loop, latency counted from the
  schedule); reports/s = accepted 204s / wall time;
- meanwhile a probe (`bench.coordinator_probe`, a process of its own) sends GETs of one cache,
  the cache list, a placement and a node-group summary at --probe-rate per second (open loop, at
  most 8 in flight; skipped ones are counted; 0 turns it off, to see what reports alone get);
  before the load the same routes are timed one request at a time (--idle-probe per route), which
  is each route's own cost;
- convergence: every agent reports all its models downloaded; from the last accepted report, how
  long until GET /v1/localmodelcaches shows every cache complete (copies.available ==
  copies.total == its nodes, every nodeStatus NodeDownloaded), and until the statuses stored in
  SQLite (what the reconcile loop writes, what `kubectl get` would show) say the same.

The generators and the probe share the machine's cores with the coordinator: the table shows how
the CPU was split during the load phase. --profile samples the coordinator with py-spy during the
load phase and prints where its CPU goes. Medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.coordinator_load import agent_name
from bench.coordinator_probe import PROBE_IN_FLIGHT, ROUTES, Probe, service_times
from bench.measured_revision import measured_revision
from modelcache.contract.objects import CACHE_KIND

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
GROUP_NAMES = ("a100", "h100", "l40s", "t4", "a10g", "l4", "v100", "mi300")
STATUS_ROUTE = "/v1/agents/{node}/status"
Figures = dict[str, float]


@dataclass(frozen=True)
class Layout:
    agents: int
    groups: tuple[str, ...]
    caches: dict[str, tuple[str, ...]]  # cache name -> its node groups

    @classmethod
    def build(cls, agents: int, groups: int, caches: int) -> Layout:
        names = GROUP_NAMES[:groups] + tuple(f"g{i}" for i in range(len(GROUP_NAMES), groups))
        spread = {
            f"model-{i:03d}": (names[i % groups],)
            + ((names[(i + 1) % groups],) if i % 2 == 0 and groups > 1 else ())
            for i in range(caches)
        }
        return cls(agents, names, spread)

    def members(self, group: str) -> int:
        index = self.groups.index(group)
        return len(range(index, self.agents, len(self.groups)))

    def expected_nodes(self) -> dict[str, int]:
        return {c: sum(self.members(g) for g in gs) for c, gs in self.caches.items()}


@dataclass
class LongPolls:
    held: int = 0
    completed: int = 0
    early: int = 0
    errors: int = 0


class LoadProcess:
    """One `bench.coordinator_load` process, spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise SystemExit(
                f"load generator {self.proc.pid} ended (exit {await self.proc.wait()})"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        await self.proc.stdin.drain()
        return await self.answer()


def main() -> int:
    args = _parse()
    layout = Layout.build(args.agents, args.groups, args.caches)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"coordinator at {measured_revision()}")
    pace = f"{args.rate:g} reports/s open loop" if args.rate else "closed loop"
    print(
        f"coordinator load: {args.agents} agents in {args.groups} groups, {args.caches} caches "
        f"({sum(layout.expected_nodes().values())} node-model pairs), {args.duration:g} s load, "
        f"{args.generators} generator processes x {args.connections // args.generators} "
        f"connections, {pace}, "
        f"{args.long_polls} long polls, {args.probe_rate:g} probes/s, "
        f"{psutil.cpu_count()} cores",
        flush=True,
    )
    runs = [asyncio.run(_run(args, layout, i + 1)) for i in range(args.repeat)]
    _report(args, runs)
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/modelcache-coordinator-bench"))
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--caches", type=int, default=20)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--generators", type=int, default=2, help="load generator processes")
    p.add_argument("--connections", type=int, default=64, help="in total, over the generators")
    p.add_argument("--steps", type=int, default=10, help="progress reports per model")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="reports/s in total, open loop (default 0: as fast as the coordinator answers)",
    )
    p.add_argument("--long-polls", type=int, default=1000)
    p.add_argument("--long-poll-wait", type=int, default=30, help="seconds per long poll")
    p.add_argument("--probe-rate", type=float, default=20.0, help="REST probes per second")
    p.add_argument(
        "--idle-probe", type=int, default=5, help="requests per route, one at a time, before load"
    )
    p.add_argument("--status-interval", type=float, default=1.0, help="coordinator flag")
    p.add_argument("--heartbeat-timeout", type=float, default=600.0, help="coordinator flag")
    p.add_argument("--converge-timeout", type=float, default=120.0)
    p.add_argument("--profile", action="store_true", help="py-spy the coordinator during load")
    args = p.parse_args()
    if args.agents < args.generators or args.connections < args.generators:
        p.error("--agents and --connections must be at least --generators")
    return args


async def _run(args: argparse.Namespace, layout: Layout, number: int) -> Figures:
    db = args.workdir / "bench.db"
    for stale in (db, db.with_name("bench.db-wal"), db.with_name("bench.db-shm")):
        stale.unlink(missing_ok=True)
    figures: Figures = {}
    log = args.workdir / f"coordinator-{number}.log"
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=PROBE_IN_FLIGHT * 2)
    async with (
        _coordinator(args, db, log) as running,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
    ):
        url, coordinator = running.url, running.ps
        await _create_objects(http, url, layout)
        async with _generators(args, url, layout) as (generators, ready):
            figures["setup_s"] = max(r["seconds"] for r in ready)
            figures["setup_errors"] = sum(sum(r["errors"].values()) for r in ready)
            figures["settle_s"] = await _settle(coordinator)
            figures["cpu_setup_s"] = _cpu(coordinator)
            if args.idle_probe > 0:
                idle = await service_times(http, url, layout.caches, args.idle_probe)
                _probe_figures(figures, "idle", idle)
            async with _long_polls(url, layout, args.long_polls, args.long_poll_wait) as polls:
                await _load_phase(args, http, url, coordinator, generators, layout, figures)
                await _convergence(args, http, url, db, generators, layout, figures)
                figures["long_polls_held"] = polls.held
                figures["long_polls_early"] = polls.early
                figures["long_polls_errors"] = polls.errors
        figures["peak_rss_mb"] = _peak_rss_mb(coordinator)
        figures["cpu_total_s"] = _cpu(coordinator)
        figures["shutdown_s"], figures["exit_code"] = await running.stop()
    _print_run(number, figures)
    return figures


@dataclass
class RunningCoordinator:
    url: str
    proc: asyncio.subprocess.Process
    ps: psutil.Process

    async def stop(self) -> tuple[float, int]:
        """SIGTERM, then the seconds until it exited and its exit code (killed after 30 s)."""
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return time.monotonic() - started, self.proc.returncode


@contextlib.asynccontextmanager
async def _coordinator(
    args: argparse.Namespace, db: Path, log: Path
) -> AsyncIterator[RunningCoordinator]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        PY,
        "-m",
        "modelcache.coordinator.main",
        f"--store=sqlite:{db}",
        f"--listen=127.0.0.1:{port}",
        f"--heartbeat-timeout={args.heartbeat_timeout}",
        f"--status-interval={args.status_interval}",
    ]
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out, cwd=REPO)
    running = RunningCoordinator(f"http://127.0.0.1:{port}", proc, psutil.Process(proc.pid))
    try:
        await _wait_ready(running.url, proc, log)
        yield running
    finally:
        await running.stop()


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SystemExit(f"the coordinator exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"the coordinator was not ready within 60 s; see {log}")


async def _create_objects(http: aiohttp.ClientSession, url: str, layout: Layout) -> None:
    api = "serving.kserve.io/v1alpha1"
    for group in layout.groups:
        body = {
            "apiVersion": api,
            "kind": "LocalModelNodeGroup",
            "metadata": {"name": group},
            "spec": {"storageLimit": "100Ti"},
        }
        await _put(http, f"{url}/v1/localmodelnodegroups/{group}", body)
    for i, (name, groups) in enumerate(layout.caches.items()):
        spec = {
            "sourceModelUri": f"hf://bench/{name}",
            "modelSize": f"{i % 8 + 1}Gi",
            "nodeGroups": list(groups),
        }
        body = {"apiVersion": api, "kind": CACHE_KIND, "metadata": {"name": name}, "spec": spec}
        await _put(http, f"{url}/v1/localmodelcaches/{name}", body)


async def _put(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with http.put(url, json=body) as response:
        if response.status not in (200, 201):
            raise SystemExit(f"PUT {url}: {response.status} {await response.text()}")


@contextlib.asynccontextmanager
async def _generators(
    args: argparse.Namespace, url: str, layout: Layout
) -> AsyncIterator[tuple[list[LoadProcess], list[dict[str, Any]]]]:
    """Start the load processes; they register their agents, then wait for commands."""
    count, first, generators = args.generators, 0, []
    try:
        for k in range(count):
            agents = args.agents // count + (k < args.agents % count)
            proc = await asyncio.create_subprocess_exec(
                *(PY, "-m", "bench.coordinator_load", f"--url={url}", f"--first={first}"),
                *(f"--count={agents}", f"--groups={','.join(layout.groups)}"),
                *(f"--connections={args.connections // count}", f"--duration={args.duration}"),
                f"--steps={args.steps}",
                f"--rate={args.rate / count}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
                limit=1 << 26,  # the load answer carries every latency
            )
            generators.append(LoadProcess(proc))
            first += agents
        ready = await asyncio.gather(*(g.answer() for g in generators))
        yield generators, ready
    finally:
        for g in generators:
            if g.proc.returncode is None:
                assert g.proc.stdin is not None
                g.proc.stdin.close()
        for g in generators:
            try:
                async with asyncio.timeout(10):
                    await g.proc.wait()
            except TimeoutError:
                g.proc.kill()
                await g.proc.wait()


async def _settle(coordinator: psutil.Process) -> float:
    """Wait until the coordinator is idle again (registrations written), up to a minute."""
    started = time.monotonic()
    while time.monotonic() - started < 60:
        before = _cpu(coordinator)
        await asyncio.sleep(0.5)
        if _cpu(coordinator) - before < 0.025:
            break
    return time.monotonic() - started


async def _load_phase(
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    url: str,
    coordinator: psutil.Process,
    generators: list[LoadProcess],
    layout: Layout,
    figures: Figures,
) -> None:
    before = await _metrics(http, url)
    me, system = psutil.Process(), psutil.cpu_times()
    cpu, bench_cpu, wall = _cpu(coordinator), _cpu(me), time.monotonic()
    profiler = await _start_profiler(args, coordinator.pid) if args.profile else None
    async with _prober(args, url, layout) as prober:
        loads, answer = await asyncio.gather(
            asyncio.gather(*(g.command("load") for g in generators)), prober.command("go")
        )
    probe = Probe.from_json(answer)
    wall = time.monotonic() - wall
    cores = {
        "coordinator": (_cpu(coordinator) - cpu) / wall,
        "generators": sum(r["cpu"] for r in loads) / wall,
        "bench": (_cpu(me) - bench_cpu) / wall,
    }
    after_system = psutil.cpu_times()
    busy = _busy(after_system) - _busy(system)  # every process on the machine, kernel included
    cores["other"] = max(busy / wall - sum(cores.values()), 0.0)  # other tenants, kernel
    cores["idle"] = (_idle(after_system) - _idle(system)) / wall
    for name, value in cores.items():
        figures[f"cores_{name}"] = value
    figures["cpu_load_s"] = cores["coordinator"] * wall
    if profiler is not None:
        await profiler.wait()
    span = max(r["ended"] for r in loads) - min(r["started"] for r in loads)
    figures["reports_per_s"] = sum(r["ok"] for r in loads) / span
    figures["report_errors"] = sum(
        sum(r["failures"].values()) + sum(v for k, v in r["statuses"].items() if k != "204")
        for r in loads
    )
    figures["changed_share"] = sum(r["changed"] for r in loads) / max(
        sum(r["ok"] for r in loads), 1
    )
    latencies = sorted(v / 1e6 for r in loads for v in r["latencies_us"])
    figures["report_p50_ms"] = _quantile(latencies, 0.5) * 1000
    figures["report_p99_ms"] = _quantile(latencies, 0.99) * 1000
    _probe_figures(figures, "load", probe)
    after = await _metrics(http, url)
    figures["server_status_p99_le_ms"] = _histogram_p99(before, after, STATUS_ROUTE) * 1000
    figures["reports_counted"] = after["reports"] - before["reports"]
    figures["reports_sent"] = sum(r["ok"] for r in loads)
    if profiler is not None:
        _print_profile(args.workdir / "profile.txt", rate=100, seconds=args.duration)


@contextlib.asynccontextmanager
async def _prober(args: argparse.Namespace, url: str, layout: Layout) -> AsyncIterator[LoadProcess]:
    """`bench.coordinator_probe`, started and ready: our own loop also reads long polls."""
    proc = await asyncio.create_subprocess_exec(
        *(PY, "-m", "bench.coordinator_probe", f"--url={url}", f"--rate={args.probe_rate}"),
        *(f"--seconds={args.duration}", f"--caches={json.dumps(layout.caches)}"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        limit=1 << 24,
    )
    prober = LoadProcess(proc)
    try:
        await prober.answer()
        yield prober
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _convergence(
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    url: str,
    db: Path,
    generators: list[LoadProcess],
    layout: Layout,
    figures: Figures,
) -> None:
    finals = await asyncio.gather(*(g.command("final") for g in generators))
    last = max(f["last_accepted"] for f in finals)
    figures["final_reports_s"] = last - min(f["started"] for f in finals)
    figures["final_failed"] = sum(f["failed"] for f in finals)
    expected = layout.expected_nodes()
    rest, stored = await asyncio.gather(
        _rest_converged(http, url, expected, last, args.converge_timeout),
        asyncio.to_thread(_stored_converged, db, expected, last, args.converge_timeout),
    )
    figures["converged_rest_s"], figures["converged_stored_s"] = rest, stored
    metrics = await _metrics(http, url)
    figures["metric_aggregation_lag_s"] = metrics["aggregation_lag"]
    figures["metric_reports_total"] = metrics["reports"]


def _all_right(items: list[dict[str, Any]], expected: dict[str, int]) -> bool:
    right = set()
    for item in items:
        name, status = item["metadata"]["name"], item.get("status") or {}
        nodes, copies = status.get("nodeStatus") or {}, status.get("copies") or {}
        want = expected.get(name)
        if want is None:
            continue
        if not copies.get("total") == copies.get("available") == len(nodes) == want:
            return False
        if any(state != "NodeDownloaded" for state in nodes.values()):
            return False
        right.add(name)
    return right == set(expected)


async def _rest_converged(
    http: aiohttp.ClientSession, url: str, expected: dict[str, int], since: float, limit: float
) -> float:
    items: list[dict[str, Any]] = []
    while time.monotonic() - since < limit:
        async with http.get(f"{url}/v1/localmodelcaches") as response:
            body = await response.read()
        received = time.monotonic()
        items = json.loads(body)["items"] if response.status == 200 else []
        if _all_right(items, expected):
            return received - since
        await asyncio.sleep(0.1)
    states = Counter(
        s for i in items for s in (i.get("status") or {}).get("nodeStatus", {}).values()
    )
    print(f"  not converged within {limit:g} s; nodeStatus values at the end: {dict(states)}")
    return math.inf


def _stored_converged(db: Path, expected: dict[str, int], since: float, limit: float) -> float:
    """The statuses the reconcile loop wrote, read from the SQLite file (read-only, WAL)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        while time.monotonic() - since < limit:
            rows = con.execute("SELECT body FROM objects WHERE kind = ?", (CACHE_KIND,)).fetchall()
            read = time.monotonic()
            if _all_right([json.loads(body) for (body,) in rows], expected):
                return read - since
            time.sleep(0.1)
    return math.inf


def _probe_figures(figures: Figures, phase: str, probe: Probe) -> None:
    if not any(probe.seconds.values()) and not probe.errors:
        return  # --probe-rate 0
    for route, values in probe.seconds.items():
        values.sort()
        figures[f"{phase}_p50_ms:{route}"] = _quantile(values, 0.5) * 1000
        figures[f"{phase}_p99_ms:{route}"] = _quantile(values, 0.99) * 1000
        figures[f"{phase}_kb:{route}"] = probe.sizes.get(route, 0) / 1000
    every = sorted(v for values in probe.seconds.values() for v in values)
    figures[f"{phase}_p50_ms:all"] = _quantile(every, 0.5) * 1000
    figures[f"{phase}_p99_ms:all"] = _quantile(every, 0.99) * 1000
    figures[f"{phase}_probes"] = len(every)
    figures[f"{phase}_probe_errors"] = sum(probe.errors.values())
    figures[f"{phase}_probe_skipped"] = probe.skipped


@contextlib.asynccontextmanager
async def _long_polls(url: str, layout: Layout, count: int, wait: int) -> AsyncIterator[LongPolls]:
    """`count` agents (spread over the groups) parked in GET desired?wait=, as real agents are."""
    polls = LongPolls()
    if count <= 0:
        yield polls
        return
    nodes = [agent_name(i, list(layout.groups)) for i in range(min(count, layout.agents))]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=wait + 30)
    all_held = asyncio.Event()

    async def poll(http: aiohttp.ClientSession, node: str) -> None:
        generation, seconds = -1, 0
        while True:
            query = f"generation={generation}&wait={seconds}"
            try:
                async with http.get(f"{url}/v1/agents/{node}/desired?{query}") as response:
                    answer = await response.json() if response.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                answer = None
            if answer is None:
                polls.errors += 1
                await asyncio.sleep(1)
                continue
            if seconds == 0:
                polls.held += 1
                if polls.held == len(nodes):
                    all_held.set()
            elif answer["generation"] != generation:
                polls.early += 1
            else:
                polls.completed += 1
            generation, seconds = answer["generation"], wait

    async def hold(http: aiohttp.ClientSession) -> None:
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(poll(http, node))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        task = asyncio.create_task(hold(http), name="bench-long-polls")
        try:
            async with asyncio.timeout(60):
                await all_held.wait()
            await asyncio.sleep(0.5)  # the last ones are back in their long poll
            yield polls
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    found: dict[str, Any] = {"buckets": {}, "reports": 0.0, "aggregation_lag": math.nan}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelcache_coordinator_reports_total":
                found["reports"] = sample.value
            elif sample.name == "modelcache_coordinator_aggregation_lag_seconds":
                found["aggregation_lag"] = sample.value
            elif sample.name == "modelcache_coordinator_request_duration_seconds_bucket":
                key = (sample.labels["route"], float(sample.labels["le"]))
                found["buckets"][key] = sample.value
    return found


def _histogram_p99(before: dict[str, Any], after: dict[str, Any], route: str) -> float:
    """Upper bound of the bucket holding the server-side p99 between two scrapes."""
    counts = sorted(
        (le, value - before["buckets"].get((r, le), 0.0))
        for (r, le), value in after["buckets"].items()
        if r == route
    )
    if not counts or counts[-1][1] == 0:
        return math.nan
    return float(next(le for le, n in counts if n >= 0.99 * counts[-1][1]))


async def _start_profiler(args: argparse.Namespace, pid: int) -> asyncio.subprocess.Process:
    spy = Path(PY).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        *(str(spy), "record", f"--pid={pid}", f"--duration={math.ceil(args.duration)}"),
        *("--rate=100", "--nonblocking", "--format=raw", "-o", str(args.workdir / "profile.txt")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


PROFILE_WRAPPERS = {
    "<module>",
    "main",
    "run_until_signalled",
    "_await",
    "serve_until_cancelled",
    "errors_as_json",
}


def _print_profile(path: Path, rate: int, seconds: float, top: int = 15) -> None:
    """Where the coordinator's CPU went, from py-spy's collapsed stacks: per entry point (the
    request handler or task that was running), per function by self time, and per modelcache
    function by inclusive time. Shares are of busy samples; cores = samples / rate / seconds."""
    entry, own, inclusive, total = Counter[str](), Counter[str](), Counter[str](), 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        count = int(count_text)
        total += count
        own[frames[-1][0]] += count
        ours = [n for n, mine in frames if mine and n.partition(" ")[0] not in PROFILE_WRAPPERS]
        for name in set(ours):
            inclusive[name] += count
        first = ours[0] if ours else None
        thread = "[thread] " if frames[0][0].startswith("Thread._bootstrap") else ""
        entry[thread + (first or "(aiohttp/asyncio only: HTTP parsing, transport, loop)")] += count
    print(f"\nprofile of the coordinator during load ({path}; {total} busy samples at {rate}/s)")
    for title, counter in (
        ("entry point", entry),
        ("self time", own),
        ("inclusive time, modelcache functions", inclusive),
    ):
        print(f"  by {title} (share of busy samples, cores):")
        for name, count in counter.most_common(top):
            print(f"    {100 * count / total:5.1f}%  {count / rate / seconds:4.2f}  {name}")


def _frame(text: str) -> tuple[str, bool]:
    """'cache_status (/.../modelcache/coordinator/statuses.py:97)' -> ('cache_status
    (statuses.py)', True): the function, its file, and whether the file is ours."""
    name, _, where = text.partition(" (")
    if not where:
        return name, False
    file = where.rstrip(")").rpartition(":")[0]
    return f"{name} ({Path(file).name})", file.startswith("modelcache/") or "/modelcache/" in file


def _busy(t: Any) -> float:
    """Busy seconds of all cores (guest time is already inside user time)."""
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def _idle(t: Any) -> float:
    return float(t.idle + t.iowait)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _peak_rss_mb(process: psutil.Process) -> float:
    """The kernel's high-water mark (VmHWM); psutil's current RSS where /proc lacks it."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(process.memory_info().rss) / 2**20


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest rank on sorted values."""
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def _print_run(number: int, figures: Figures) -> None:
    print(
        f"  run {number}: {figures['reports_per_s']:7.0f} reports/s, "
        f"REST p99 {figures.get('load_p99_ms:all', math.nan):7.1f} ms, "
        f"converged {figures['converged_rest_s']:.2f} s (REST) "
        f"{figures['converged_stored_s']:.2f} s (stored), "
        f"coordinator {figures['cores_coordinator']:.2f} cores, "
        f"RSS {figures['peak_rss_mb']:.0f} MB",
        flush=True,
    )


def _report(args: argparse.Namespace, runs: list[Figures]) -> None:
    def m(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {label:<52} {value:>22}  {target:<12} {verdict}")

    print(f"\ncommand: .venv/bin/python -m bench.coordinator_bench {' '.join(sys.argv[1:])}")
    print(f"coordinator at {measured_revision()}")
    print(f"medians over {len(runs)} run(s); probe latency is client-side, open loop\n")
    row("figure", "value", "target")
    rate = m("reports_per_s")
    row(
        "status reports accepted per second (204s / wall)", f"{rate:,.0f}", ">= 2,000", rate >= 2000
    )
    row("  report errors (non-204 or connection)", f"{m('report_errors'):.0f}", "0")
    row("  reports that changed state (share)", f"{100 * m('changed_share'):.0f} %")
    row(
        "  report latency p50 / p99 "
        + ("(open loop, from schedule)" if args.rate else "(closed loop, saturated)"),
        f"{m('report_p50_ms'):.1f} / {m('report_p99_ms'):.1f} ms",
    )
    row("  server-side status handler p99 (bucket <=)", f"{m('server_status_p99_le_ms'):g} ms")
    row(
        "  counted by coordinator / sent (load phase)",
        f"{m('reports_counted'):,.0f} / {m('reports_sent'):,.0f}",
    )
    titles = (("load", "under load"), ("idle", "one request at a time, no load"))
    for phase, title in titles:
        if f"{phase}_p99_ms:all" not in runs[0]:
            continue
        print(f"  REST p50 / p99 {title}:")
        for route in (*ROUTES, "all"):
            p99 = m(f"{phase}_p99_ms:{route}")
            size = f" ({m(f'{phase}_kb:{route}'):,.0f} kB)" if route != "all" else ""
            target, ok = ("< 50 ms", p99 < 50) if phase == "load" and route == "all" else ("", None)
            label = f"    {route}{size}"
            row(label, f"{m(f'{phase}_p50_ms:{route}'):.1f} / {p99:.1f} ms", target, ok)
        row(
            "    probes answered / errors / skipped (8 in flight)",
            f"{m(f'{phase}_probes'):.0f} / {m(f'{phase}_probe_errors'):.0f}"
            f" / {m(f'{phase}_probe_skipped'):.0f}",
        )
    row("final reports (every agent all downloaded) took", f"{m('final_reports_s'):.2f} s")
    rest, stored = m("converged_rest_s"), m("converged_stored_s")
    row("last report -> GET /v1/localmodelcaches all right", f"{rest:.2f} s", "< 5 s", rest < 5)
    row("last report -> stored statuses all right", f"{stored:.2f} s", "< 5 s", stored < 5)
    row("  /metrics aggregation_lag_seconds after", f"{m('metric_aggregation_lag_s'):.2f} s")
    row("  /metrics reports_total after", f"{m('metric_reports_total'):,.0f}")
    row(
        "long polls held / returned early / errors",
        f"{m('long_polls_held'):.0f} / {m('long_polls_early'):.0f} / {m('long_polls_errors'):.0f}",
    )
    row("coordinator peak RSS (VmHWM)", f"{m('peak_rss_mb'):.0f} MB")
    row(
        "coordinator SIGTERM -> exit / exit code (worst run)",
        f"{max(r['shutdown_s'] for r in runs):.2f} s / {max(r['exit_code'] for r in runs):.0f}",
    )
    row(
        "coordinator CPU s: setup / load / whole run",
        f"{m('cpu_setup_s'):.1f} / {m('cpu_load_s'):.1f} / {m('cpu_total_s'):.1f}",
    )
    row("agents register + read desired (setup)", f"{m('setup_s'):.1f} s")
    row("  setup errors (register / desired not 200)", f"{m('setup_errors'):.0f}", "0")
    row("  then until the coordinator is idle", f"{m('settle_s'):.1f} s")
    split = " / ".join(
        f"{m(f'cores_{k}'):.2f}" for k in ("coordinator", "generators", "bench", "other", "idle")
    )
    row("cores during load: coord / gen / bench / other / idle", split)


if __name__ == "__main__":
    sys.exit(main())
