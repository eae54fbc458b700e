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


class ListBody:
    """A list body as the pieces it is made of: the head, the item bodies with commas between
    them, the tail. Sent piece by piece, a 7 MB list is never joined into one new buffer (at
    10,000 nodes each join and each copy of it into the transport stopped the event loop for
    25-30 ms), and the sending yields to other requests between pieces."""

    def __init__(self, head: bytes, tail: bytes = b"]}") -> None:
        self._head, self._tail = head, tail

    def of(self, items: list[bytes]) -> list[bytes]:
        pieces = [self._head]
        for i, item in enumerate(items):
            if i:
                pieces.append(b",")
            pieces.append(item)
        pieces.append(self._tail)
        return pieces
