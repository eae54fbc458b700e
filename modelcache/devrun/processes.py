"""The dev run's child processes: each writes to its own log, is watched from start to stop, and
is stopped in tiers (agents, then the coordinator, then the origin) so each one's last words still
reach the service below it.

Children run in process groups of their own: a Ctrl-C on the terminal reaches only the runner,
which then stops them in order instead of all of them dying at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Never

import psutil

from modelcache.contract.errors import ModelCacheError

LOG_TAIL_LINES = 20
STOP_DEADLINE = 10.0
"""Seconds each tier has to stop after SIGTERM before it is killed."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    log: Path
    tier: int
    """Higher tiers stop first: an agent reports to the coordinator and pulls from the origin."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the runner's own environment."""


class ChildFailedError(ModelCacheError):
    """A child exited, or did not become ready in time; the message ends with its log's tail."""


@dataclass(slots=True)
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process
    waiter: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Children:
    """Every child started so far, in start order, and the record of their pids on disk."""

    def __init__(self, pid_file: Path) -> None:
        self._pid_file = pid_file
        self._children: list[Child] = []
        self._exits: asyncio.Queue[Child] = asyncio.Queue()
        self._stopping = False

    @property
    def all(self) -> tuple[Child, ...]:
        return tuple(self._children)

    async def start(self, spec: ChildSpec) -> Child:
        log = await asyncio.to_thread(spec.log.open, "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                process_group=0,
            )
        finally:
            log.close()  # the child holds its own descriptor
        child = Child(spec, process)
        child.waiter = asyncio.create_task(self._note_exit(child), name=f"devrun-wait-{spec.name}")
        self._children.append(child)
        await asyncio.to_thread(self._write_pids)
        return child

    async def _note_exit(self, child: Child) -> None:
        await child.process.wait()
        if not self._stopping:
            self._exits.put_nowait(child)

    async def first_exit(self) -> Never:
        """Wait until some child exits on its own; raise what happened to it."""
        child = await self._exits.get()
        raise await failure(child, f"exited with code {child.process.returncode}")

    async def until_ready(
        self, child: Child, probe: Callable[[], Awaitable[bool]], seconds: float
    ) -> None:
        """Poll `probe` until it answers yes; fail if the child exits first or time runs out."""
        try:
            async with asyncio.timeout(max(seconds, 0.1)):
                while not await probe():
                    if not child.running:
                        code = child.process.returncode
                        raise await failure(child, f"exited with code {code} before it was ready")
                    await asyncio.sleep(0.1)
        except TimeoutError as e:
            what = f"was not ready in time (the last {seconds:.0f} s of --ready-timeout)"
            raise await failure(child, what) from e

    async def stop(self, deadline: float = STOP_DEADLINE) -> list[str]:
        """SIGTERM tier by tier, SIGKILL what outlives `deadline`; notes on what went wrong."""
        self._stopping = True
        notes: list[str] = []
        for tier in sorted({c.spec.tier for c in self._children}, reverse=True):
            group = [c for c in self._children if c.spec.tier == tier and c.running]
            for child in group:
                _send(child, signal.SIGTERM)
            try:
                async with asyncio.timeout(deadline):
                    await asyncio.gather(*(child.process.wait() for child in group))
            except TimeoutError:
                for child in group:
                    if child.running:
                        notes.append(f"{child.name} did not stop within {deadline:.0f} s: killed")
                        _send(child, signal.SIGKILL)
                await asyncio.gather(*(child.process.wait() for child in group))
            notes += [
                f"{c.name} exited with code {c.process.returncode}; see {c.spec.log}"
                for c in group
                if c.process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL)
            ]
        await asyncio.gather(*(c.waiter for c in self._children if c.waiter is not None))
        await asyncio.to_thread(self._pid_file.unlink, missing_ok=True)
        return notes

    def kill_all(self) -> None:
        """A second Ctrl-C: no more waiting."""
        for child in self._children:
            if child.running:
                _send(child, signal.SIGKILL)

    def _write_pids(self) -> None:
        lines = "".join(f"{c.name} {c.process.pid}\n" for c in self._children)
        self._pid_file.write_text(lines)


def _send(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signum)


async def failure(child: Child, what: str) -> ChildFailedError:
    return ChildFailedError(f"{child.name} {what}; {await log_excerpt(child)}")


async def log_excerpt(child: Child) -> str:
    tail = await asyncio.to_thread(log_tail, child.spec.log)
    shown = "".join(f"  | {line}\n" for line in tail) or "  (the log is empty)\n"
    return f"the end of {child.spec.log}:\n{shown}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log (blocking)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except FileNotFoundError:
        return []


def left_running(pid_file: Path) -> list[str]:
    """``name (pid N)`` for each child a previous run left running (blocking)."""
    try:
        lines = pid_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    alive = []
    for line in lines:
        name, _, pid = line.partition(" ")
        try:
            command = psutil.Process(int(pid)).cmdline()
        except (ValueError, psutil.Error):
            continue
        if any("modelcache" in part for part in command):
            alive.append(f"{name} (pid {pid})")
    return alive
