"""Live progress of the demo cache, read from the coordinator's status as any client would.

On a terminal each node gets a progress bar; in a log, a line per change of state and a summary
every few seconds. Either way the source is the cache's `status.nodeStatus` and
`status.nodeProgress`, so what you watch is what the coordinator believes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Never, TextIO

from tqdm import tqdm

from modelcache.cli.objects_command import CACHES, CoordinatorClient
from modelcache.contract.quantities import format_bytes

DOWNLOADED = "NodeDownloaded"
NOT_SEEN = "waiting for its agent"
POLL_SECONDS = 0.25
PLAIN_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class NodeProgress:
    node: str
    group: str
    state: str
    done: int
    total: int

    def line(self) -> str:
        return (
            f"{self.node} ({self.group}): {self.state}, "
            f"{format_bytes(self.done)} of {format_bytes(self.total)}"
        )


def progress_of(
    cache: Any, nodes: Sequence[tuple[str, str]], model_size: int
) -> list[NodeProgress]:
    """One row per expected (node, group), from a LocalModelCache object (None: not there yet)."""
    status = cache.get("status") if isinstance(cache, dict) else None
    status = status if isinstance(status, dict) else {}
    states = status.get("nodeStatus") or {}
    progress = status.get("nodeProgress") or {}
    rows = []
    for node, group in nodes:
        bytes_of = progress.get(node) or {}
        total = bytes_of.get("bytesTotal") or model_size
        rows.append(
            NodeProgress(
                node, group, str(states.get(node, NOT_SEEN)), bytes_of.get("bytesDone", 0), total
            )
        )
    return rows


def all_downloaded(rows: Sequence[NodeProgress]) -> bool:
    return bool(rows) and all(row.state == DOWNLOADED for row in rows)


class ProgressBoard:
    """Shows rows of node progress at a human pace; `last` keeps what was shown."""

    def __init__(self, stream: TextIO = sys.stdout, *, tty: bool | None = None) -> None:
        self._stream = stream
        self._tty = _is_terminal(stream) if tty is None else tty
        self._bars: list[tqdm[Never]] = []
        self._states: dict[str, str] = {}
        self._last_summary = time.monotonic()
        self.last: list[NodeProgress] = []

    def show(self, rows: Sequence[NodeProgress]) -> None:
        self.last = list(rows)
        if self._tty:
            self._draw_bars(rows)
            return
        for row in rows:
            if self._states.get(row.node) != row.state:
                self._states[row.node] = row.state
                self._stream.write(f"  {row.line()}\n")
        now = time.monotonic()
        if now - self._last_summary >= PLAIN_INTERVAL_SECONDS and not all_downloaded(rows):
            self._last_summary = now
            summary = ", ".join(f"{r.node} {100 * r.done // max(r.total, 1)}%" for r in rows)
            self._stream.write(f"  progress: {summary}\n")
        self._stream.flush()

    def _draw_bars(self, rows: Sequence[NodeProgress]) -> None:
        width = max(len(f"{row.node} ({row.group}) {row.state}") for row in rows)
        while len(self._bars) < len(rows):
            self._bars.append(
                tqdm(
                    total=rows[len(self._bars)].total,
                    position=len(self._bars),
                    file=self._stream,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    dynamic_ncols=True,
                    leave=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {rate_fmt}",
                )
            )
        for bar, row in zip(self._bars, rows, strict=False):
            bar.set_description_str(
                f"{row.node} ({row.group}) {row.state}".ljust(width), refresh=False
            )
            bar.total = row.total
            if row.done >= bar.n:
                bar.update(row.done - bar.n)  # update() keeps the rate right
            else:
                bar.n = row.done  # a pull started over
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []


def _is_terminal(stream: TextIO) -> bool:
    """A terminal with a width: bars drawn into zero columns show nothing at all."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


async def until_downloaded(
    client: CoordinatorClient,
    cache_name: str,
    nodes: Sequence[tuple[str, str]],
    model_size: int,
    board: ProgressBoard,
) -> list[NodeProgress]:
    """Poll the cache's status until every expected node reports NodeDownloaded."""
    while True:
        reply = await client.call("GET", CACHES.path(cache_name))
        rows = progress_of(reply.body if reply.ok else None, nodes, model_size)
        board.show(rows)
        if all_downloaded(rows):
            return rows
        await asyncio.sleep(POLL_SECONDS)
