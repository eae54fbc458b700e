"""Load generator for `bench.coordinator_bench`: simulated agents that register, read their desired
list and send status reports as fast as the coordinator accepts them.

    .venv/bin/python -m bench.coordinator_load --url http://127.0.0.1:8080 --first 0 --count 5000 \
        --agents 10000 --groups a100,h100,l40s,t4 --connections 32 --duration 20

The benchmark starts one or more of these and drives them over JSON lines, so every generator
starts each phase at the same moment:

    stdout {"phase": "ready", ...}  once its agents are registered and know their desired lists
    stdin  load   -> reports for --duration seconds (as fast as answered, or at --rate per second);
                     stdout counts, latencies and CPU seconds
    stdin  final  -> each agent reports all its models ModelDownloaded; stdout the last 204's time
    stdin  exit   -> close the connections and end

Times are `time.monotonic()`, which on Linux is one clock for every process on the machine, so the
parent can compare them with its own.

Requests go over a minimal keep-alive HTTP/1.1 client on asyncio streams, not aiohttp's client:
the generator shares the machine's cores with the coordinator it measures, and the raw client
spends a fraction of the CPU per request, leaving more of the machine to the process under test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

GiB = 1 << 30
DISK_CAPACITY = 4096 * GiB
STARTED_AT = "2026-11-24T10:00:00Z"
FINISHED_AT = "2026-11-24T10:05:00Z"
RETRYABLE = (ConnectionError, asyncio.IncompleteReadError, OSError)


class HttpProtocolError(ConnectionError):
    """The coordinator answered in a way this small client does not read (e.g. chunked)."""


class RawHttp:
    """One keep-alive connection; requests on it run one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reconnects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed: one fresh retry
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            try:
                self._writer.write(head + body)
                return await self._response()
            except RETRYABLE:
                self.close()
                if attempt == 2:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        status, length, close = int(head[9:12]), 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise HttpProtocolError(f"unsupported Transfer-Encoding {value.strip()!r}")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self._reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass(slots=True)
class Agent:
    name: str
    group: str
    generation: int = 0
    models: tuple[tuple[str, int], ...] = ()  # (storage key, bytes), in desired-list order
    step: int = 0
    sent: int = 0


class ReportBodies:
    """Full reports, serialized once: agents of a group at the same step send the same bytes.

    Models download one after another, each in `per_model` reports of growing bytesDone. The
    load phase stops at the last model's final Downloading step, so it never finishes every model
    (an agent that got there sends unchanged reports: heartbeats); step -1 is all downloaded.
    """

    def __init__(self, per_model: int) -> None:
        self.per_model = per_model
        self._bodies: dict[tuple[tuple[tuple[str, int], ...], int, int], bytes] = {}

    def last_step(self, agent: Agent) -> int:
        return max(len(agent.models) * self.per_model - 1, 0)

    def body(self, agent: Agent, step: int) -> bytes:
        cache_key = (agent.models, agent.generation, step)
        body = self._bodies.get(cache_key)
        if body is None:
            body = self._bodies[cache_key] = self._render(agent, step)
        return body

    def _render(self, agent: Agent, step: int) -> bytes:
        per_model, entries, used = self.per_model, [], 0
        for index, (key, size) in enumerate(agent.models):
            begin = index * per_model
            if step < 0 or step >= begin + per_model:
                entries.append(_model(key, "ModelDownloaded", size, size, finished=True))
                used += size
            elif step < begin:
                entries.append(_model(key, "ModelDownloadPending", 0, size))
            else:
                done = size * (step - begin + 1) // (per_model + 1)
                entries.append(_model(key, "ModelDownloading", done, size, rate=5e8))
                used += done
        raw = {
            "generation": agent.generation,
            "disk": {"capacityBytes": DISK_CAPACITY, "freeBytes": DISK_CAPACITY - used},
            "models": entries,
        }
        return json.dumps(raw, separators=(",", ":")).encode()


def _model(
    key: str, state: str, done: int, total: int, *, rate: float = 0.0, finished: bool = False
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "storageKey": key,
        "state": state,
        "bytesDone": done,
        "bytesTotal": total,
        "rateBytesPerSecond": rate,
    }
    if state != "ModelDownloadPending":
        model["startedAt"] = STARTED_AT
    if finished:
        model["finishedAt"] = FINISHED_AT
    return model


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        if url.hostname is None or url.port is None:
            raise SystemExit(f"--url {args.url!r}: write http://HOST:PORT")
        self.connections = [RawHttp(url.hostname, url.port) for _ in range(args.connections)]
        groups = args.groups.split(",")
        self.agents = [
            Agent(agent_name(i, groups), groups[i % len(groups)])
            for i in range(args.first, args.first + args.count)
        ]
        self.duration: float = args.duration
        self.rate: float = args.rate
        self.bodies = ReportBodies(args.steps)

    async def setup(self) -> dict[str, Any]:
        """Each agent registers and reads its desired list, as a real agent does on start."""
        started, errors = time.monotonic(), Counter[str]()
        pending = iter(self.agents)

        async def worker(http: RawHttp) -> None:
            for agent in pending:
                body = {
                    "nodeGroup": agent.group,
                    "address": f"http://{agent.name}:9090",
                    "disk": {"capacityBytes": DISK_CAPACITY, "freeBytes": DISK_CAPACITY},
                }
                path = f"/v1/agents/{agent.name}"
                status, _ = await http.request(
                    "POST", f"{path}/register", json.dumps(body).encode()
                )
                if status != 200:
                    errors[f"register {status}"] += 1
                    continue
                status, answer = await http.request("GET", f"{path}/desired?generation=-1")
                if status != 200:
                    errors[f"desired {status}"] += 1
                    continue
                desired = json.loads(answer)
                agent.generation = desired["generation"]
                agent.models = tuple(
                    (m["storageKey"], m["modelSizeBytes"]) for m in desired["models"]
                )

        async with asyncio.TaskGroup() as tg:
            for http in self.connections:
                tg.create_task(worker(http))
        return {
            "phase": "ready",
            "agents": len(self.agents),
            "seconds": time.monotonic() - started,
            "errors": dict(errors),
        }

    async def load(self) -> dict[str, Any]:
        """Closed loop by default: every connection sends the next agent's next report as soon as
        the last one is answered, for `duration` seconds. With a rate, open loop: each connection
        sends on a fixed schedule and latency counts from the scheduled moment, so a stall shows
        in the figures instead of silently delaying the next sends."""
        cpu_before = _cpu_seconds()
        started = time.monotonic()
        deadline = started + self.duration
        order: Iterator[Agent] = itertools.cycle(self.agents)
        latencies: list[int] = []
        statuses, failures = Counter[int](), Counter[str]()
        changed = 0
        period = len(self.connections) / self.rate if self.rate > 0 else 0.0

        async def worker(http: RawHttp, index: int) -> None:
            nonlocal changed
            due = started + period * index / len(self.connections)
            while (now := time.monotonic()) < deadline:
                if period:
                    if due >= deadline:
                        break
                    if due > now:
                        await asyncio.sleep(due - now)
                    sent, due = due, due + period
                else:
                    sent = now
                agent = next(order)
                body = self.bodies.body(agent, agent.step)
                last = self.bodies.last_step(agent)
                changed += agent.sent == 0 or agent.step < last
                agent.step = min(agent.step + 1, last)
                agent.sent += 1
                try:
                    status, _ = await http.request("POST", f"/v1/agents/{agent.name}/status", body)
                except RETRYABLE as e:
                    failures[type(e).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                latencies.append(int((time.monotonic() - sent) * 1e6))
                statuses[status] += 1

        async with asyncio.TaskGroup() as tg:
            for index, http in enumerate(self.connections):
                tg.create_task(worker(http, index))
        ended = time.monotonic()
        return {
            "phase": "load",
            "ok": statuses[204],
            "statuses": {str(k): v for k, v in statuses.items()},
            "failures": dict(failures),
            "changed": changed,
            "started": started,
            "ended": ended,
            "cpu": _cpu_seconds() - cpu_before,
            "latencies_us": latencies,
            "reconnects": sum(h.reconnects for h in self.connections),
        }

    async def final(self) -> dict[str, Any]:
        """Every agent reports all its models downloaded (three tries each)."""
        pending = iter(self.agents)
        last_accepted, failed = 0.0, 0

        async def worker(http: RawHttp) -> None:
            nonlocal last_accepted, failed
            for agent in pending:
                body = self.bodies.body(agent, -1)
                for _ in range(3):
                    try:
                        status, _ = await http.request(
                            "POST", f"/v1/agents/{agent.name}/status", body
                        )
                    except RETRYABLE:
                        continue
                    if status == 204:
                        last_accepted = max(last_accepted, time.monotonic())
                        break
                else:
                    failed += 1

        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for http in self.connections:
                tg.create_task(worker(http))
        return {
            "phase": "final",
            "started": started,
            "last_accepted": last_accepted,
            "failed": failed,
        }

    def close(self) -> None:
        for http in self.connections:
            http.close()


def agent_name(index: int, groups: list[str]) -> str:
    return f"{groups[index % len(groups)]}-node-{index:05d}"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message, separators=(",", ":")), flush=True)


async def _serve(args: argparse.Namespace) -> int:
    generator = Generator(args)
    try:
        _say(await generator.setup())
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "load":
                _say(await generator.load())
            elif command == "final":
                _say(await generator.final())
            elif command in ("exit", ""):  # "" is end of input: the parent went away
                return 0
            else:
                print(f"coordinator_load: unknown command {command!r}", file=sys.stderr)
                return 2
    finally:
        generator.close()


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="the coordinator, http://HOST:PORT")
    p.add_argument("--first", type=int, required=True, help="index of this process's first agent")
    p.add_argument("--count", type=int, required=True, help="agents this process simulates")
    p.add_argument(
        "--groups", required=True, help="node groups, comma-separated; agent i is in i%%G"
    )
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=10, help="progress reports per model")
    p.add_argument("--rate", type=float, default=0.0, help="reports/s of this process (0: max)")
    return p.parse_args()


def main() -> int:
    return asyncio.run(_serve(_parse()))


if __name__ == "__main__":
    sys.exit(main())
