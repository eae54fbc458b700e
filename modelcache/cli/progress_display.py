"""Pull progress for people: a bar on a terminal, plain periodic lines in logs."""

from __future__ import annotations

import sys
import time
from typing import Never, TextIO

from tqdm import tqdm

from modelcache.contract.quantities import format_bytes
from modelcache.pulling import PullProgress

PLAIN_INTERVAL_SECONDS = 5.0


class ProgressDisplay:
    """Receives engine progress events (many per second) and shows them at a human pace."""

    def __init__(
        self,
        stream: TextIO = sys.stderr,
        *,
        tty: bool | None = None,
        interval: float = PLAIN_INTERVAL_SECONDS,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._tty = stream.isatty() if tty is None else tty
        self._bar: tqdm[Never] | None = None
        self._started = time.monotonic()
        self._last_line = self._started
        self._first_done: int | None = None

    def __call__(self, event: PullProgress) -> None:
        if self._first_done is None:
            self._first_done = event.done  # resumed bytes do not count towards the rate
        if self._tty:
            self._update_bar(event)
        else:
            now = time.monotonic()
            if now - self._last_line >= self._interval:
                self._last_line = now
                self._stream.write(self._plain_line(event, now) + "\n")
                self._stream.flush()

    def _update_bar(self, event: PullProgress) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=event.total,
                initial=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        bar.update(event.done - bar.n)

    def _plain_line(self, event: PullProgress, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        fetched = event.done - (self._first_done or 0)
        rate = fetched / elapsed
        left = event.total - event.done
        eta = f", ETA {left / rate:.0f}s" if rate > 0 else ""
        pct = 100.0 * event.done / event.total if event.total else 100.0
        return (
            f"pulled {format_bytes(event.done)} of {format_bytes(event.total)} ({pct:.0f}%), "
            f"{rate / 1e6:.1f} MB/s{eta}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
