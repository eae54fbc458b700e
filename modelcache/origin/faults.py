"""Programmable failures and traffic counters, so tests can break an origin on purpose.

A fault is consumed by a GET that is about to send file bytes: `/resolve` for a file the
origin serves itself, `/cdn/...` and `/files/...`. HEADs, listings and LFS redirects never
consume one, so "the next 2 data requests fail" means exactly that, whatever metadata calls a
client makes on the way. Rules are matched in the order they were added (FIFO).
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field


class FaultKind(enum.Enum):
    STATUS = "status"
    RESET = "reset"
    TRUNCATE = "truncate"
    FLIP = "flip"
    STALL = "stall"
    IGNORE_RANGE = "ignore_range"


@dataclass
class FaultRule:
    """One programmed failure; `remaining=None` keeps it forever, `hits` counts its uses."""

    kind: FaultKind
    remaining: int | None
    path: str | None = None
    status: int = 500
    retry_after: str | None = None
    after_bytes: int = 0
    offset: int = 0
    seconds: float = 0.0
    hits: int = 0

    def matches(self, path: str) -> bool:
        return self.path is None or self.path in path


class Faults:
    """The FIFO of programmed failures; `path` filters by substring of the served file's path."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The rules not used up yet, oldest first."""
        return tuple(self._rules)

    def status(
        self,
        code: int,
        count: int | None = 1,
        retry_after: str | None = None,
        *,
        path: str | None = None,
    ) -> FaultRule:
        """Answer `code` (with `Retry-After` when given) instead of the file."""
        if not 400 <= code <= 599:
            raise ValueError(f"a status fault needs an error code (400-599), got {code}")
        return self._add(
            FaultRule(FaultKind.STATUS, count, path, status=code, retry_after=retry_after)
        )

    def reset(
        self, after_bytes: int, count: int | None = 1, *, path: str | None = None
    ) -> FaultRule:
        """Send headers and `after_bytes` of body, then reset the TCP connection (RST)."""
        return self._add(
            FaultRule(FaultKind.RESET, count, path, after_bytes=_at_least_0(after_bytes))
        )

    def truncate(
        self, after_bytes: int, count: int | None = 1, *, path: str | None = None
    ) -> FaultRule:
        """Advertise the full length, send `after_bytes`, then close the connection cleanly."""
        return self._add(
            FaultRule(FaultKind.TRUNCATE, count, path, after_bytes=_at_least_0(after_bytes))
        )

    def flip(
        self, offset_in_response: int, count: int | None = 1, *, path: str | None = None
    ) -> FaultRule:
        """Xor 0xFF into the byte at this offset of the response body (not of the file)."""
        return self._add(
            FaultRule(FaultKind.FLIP, count, path, offset=_at_least_0(offset_in_response))
        )

    def stall(
        self, after_bytes: int, seconds: float, count: int | None = 1, *, path: str | None = None
    ) -> FaultRule:
        """Send `after_bytes`, go silent for `seconds`, then finish the body."""
        if seconds < 0:
            raise ValueError(f"a stall lasts >= 0 seconds, got {seconds}")
        rule = FaultRule(
            FaultKind.STALL, count, path, after_bytes=_at_least_0(after_bytes), seconds=seconds
        )
        return self._add(rule)

    def ignore_range(self, count: int | None = 1, *, path: str | None = None) -> FaultRule:
        """Answer 200 with the whole file even when the request had a `Range` header."""
        return self._add(FaultRule(FaultKind.IGNORE_RANGE, count, path))

    def clear(self) -> None:
        self._rules.clear()

    def take(self, path: str) -> FaultRule | None:
        """Consume the oldest rule matching `path`, if any (called by the origin per data GET)."""
        for index, rule in enumerate(self._rules):
            if not rule.matches(path):
                continue
            rule.hits += 1
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining == 0:
                    del self._rules[index]
            return rule
        return None

    def _add(self, rule: FaultRule) -> FaultRule:
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError(
                f"a fault hits count >= 1 requests (or None: forever), got {rule.remaining}"
            )
        self._rules.append(rule)
        return rule


def _at_least_0(value: int) -> int:
    if value < 0:
        raise ValueError(f"byte counts and offsets are >= 0, got {value}")
    return value


@dataclass
class OriginStats:
    """What the origin served; `ranges` holds (path, start, end inclusive) of ranged data GETs."""

    body_bytes_sent: int = 0
    bytes_by_path: dict[str, int] = field(default_factory=dict)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    ranges: list[tuple[str, int, int]] = field(default_factory=list)

    def count_body(self, path: str, size: int) -> None:
        self.body_bytes_sent += size
        self.bytes_by_path[path] = self.bytes_by_path.get(path, 0) + size

    def reset(self) -> None:
        self.body_bytes_sent = 0
        self.bytes_by_path.clear()
        self.requests.clear()
        self.ranges.clear()
