"""The REST probe of `bench.coordinator_bench`, in a process of its own.

    .venv/bin/python -m bench.coordinator_probe --url http://127.0.0.1:8080 --rate 20 \
        --seconds 20 --caches '{"model-000": ["a100", "h100"]}'

It times GETs of one cache, the cache list, a placement and a node-group summary, open loop at
--rate per second (at most 8 in flight; skipped ones are counted). It runs apart from the
benchmark's own event loop because that loop also reads the long polls' answers (a thousand
desired lists at once) and the cache list when it checks convergence: a probe sharing it was
measured finishing late by up to 80 ms of the benchmark's work, not the coordinator's.

    stdout {"phase": "ready"}  once its HTTP session is up
    stdin  go               -> probes for --seconds; stdout the latencies (JSON, one line)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

ROUTES = (
    "GET /v1/localmodelcaches/{name}",
    "GET /v1/localmodelcaches",
    "GET /v1/placement",
    "GET /v1/nodegroups/{group}",
)
PROBE_IN_FLIGHT = 8
CacheGroups = dict[str, tuple[str, ...]]  # cache name -> its node groups


@dataclass
class Probe:
    seconds: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES})
    sizes: dict[str, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Probe:
        return cls(raw["seconds"], raw["sizes"], Counter(raw["errors"]), raw["skipped"])


def probe_paths(caches: CacheGroups, i: int) -> dict[str, str]:
    cache = list(caches)[i % len(caches)]
    return {
        ROUTES[0]: f"/v1/localmodelcaches/{cache}",
        ROUTES[1]: "/v1/localmodelcaches",
        ROUTES[2]: f"/v1/placement?cache={cache}",
        ROUTES[3]: f"/v1/nodegroups/{caches[cache][0]}",
    }


async def probe_once(http: aiohttp.ClientSession, url: str, route: str, probe: Probe) -> None:
    started = time.perf_counter()
    try:
        async with http.get(url) as response:
            body = await response.read()
        if response.status != 200:
            probe.errors[f"{route} {response.status}"] += 1
            return
        probe.seconds[route].append(time.perf_counter() - started)
        probe.sizes[route] = len(body)
    except (aiohttp.ClientError, TimeoutError) as e:
        probe.errors[f"{route} {type(e).__name__}"] += 1


async def service_times(
    http: aiohttp.ClientSession, url: str, caches: CacheGroups, per_route: int
) -> Probe:
    """One request at a time on an idle coordinator: what each route costs on its own."""
    probe = Probe()
    for i in range(per_route):
        for route, path in probe_paths(caches, i).items():
            await probe_once(http, url + path, route, probe)
    return probe


async def open_loop(
    http: aiohttp.ClientSession, url: str, caches: CacheGroups, rate: float, seconds: float
) -> Probe:
    """At `rate`/s over the four query routes; the slowest never pile up past 8."""
    probe = Probe()
    if rate <= 0:
        await asyncio.sleep(seconds)
        return probe
    in_flight = 0

    async def one(route: str, path: str) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            await probe_once(http, url + path, route, probe)
        finally:
            in_flight -= 1

    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    async with asyncio.TaskGroup() as tg:
        while (at := start + i / rate) < start + seconds:
            await asyncio.sleep(max(at - loop.time(), 0))
            route = ROUTES[i % len(ROUTES)]
            if in_flight >= PROBE_IN_FLIGHT:
                probe.skipped += 1
            else:
                tg.create_task(one(route, probe_paths(caches, i // len(ROUTES))[route]))
            i += 1
    return probe


async def _serve(args: argparse.Namespace) -> int:
    caches: CacheGroups = {name: tuple(gs) for name, gs in json.loads(args.caches).items()}
    connector = aiohttp.TCPConnector(limit=PROBE_IN_FLIGHT * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        print(json.dumps({"phase": "ready"}), flush=True)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        if (await reader.readline()).strip() != b"go":
            return 1
        probe = await open_loop(http, args.url, caches, args.rate, args.seconds)
    print(json.dumps(asdict(probe)), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="probes per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--caches", required=True, help="JSON: cache name -> its node groups")
    return asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
