"""Cache objects rendered as JSON once per change, and served as those bytes.

At 10,000 nodes one cache is some 400 kB of JSON and the list of 20 caches 7 MB: REST reads, the
status writer and the store all use the one rendering of each change instead of each building and
serializing its own (see `Registry.rendering` for when a rendering is still good).
"""

from __future__ import annotations

import orjson

from modelcache.contract.objects import JsonObject


class Rendering:
    """One rendering of a cache's status, and of the whole object with it when asked for."""

    __slots__ = ("_body", "at", "obj", "status", "version")

    def __init__(self, version: int, at: float, obj: JsonObject, status: bytes) -> None:
        self.version = version
        """The cache's change count it was rendered at."""
        self.at = at
        """When, on the registry's clock."""
        self.obj = obj
        """The stored object (metadata and spec) it was rendered with."""
        self.status = status
        """The status as JSON."""
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        """The object with this status, as JSON (what GET answers)."""
        if self._body is None:
            head = orjson.dumps({k: v for k, v in self.obj.items() if k != "status"})[:-1]
            self._body = head + (b"," if len(head) > 1 else b"") + b'"status":' + self.status + b"}"
        return self._body


class JoinedList:
    """A list body joined from item bodies, joined again only when one of them changed: under
    load GETs of the list come faster than the items are rendered again, and joining 7 MB has
    its cost too."""

    def __init__(self, head: bytes, tail: bytes = b"]}") -> None:
        self._head, self._tail = head, tail
        self._items: list[bytes] = []
        self._body = head + tail

    def of(self, items: list[bytes]) -> bytes:
        same = len(items) == len(self._items) and all(
            a is b for a, b in zip(items, self._items, strict=True)
        )
        if not same:
            self._items = items
            self._body = b"".join((self._head, b",".join(items), self._tail))
        return self._body
