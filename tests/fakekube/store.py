"""The fake server's state: objects, one global resourceVersion, event history, watchers.

Every method is synchronous, so each write (bump the resourceVersion, store, record the event,
fan it out to watchers) is atomic with respect to the event loop, as an etcd transaction is.
Stored objects are never mutated in place: every write stores a new dict, and readers get
deep copies.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from tests.fakekube.admission import Scope, now, prepare_create, prepare_update, uid_mismatch
from tests.fakekube.patches import PatchApplyError, PatchFormatError
from tests.fakekube.resources import (
    RESOURCES,
    ApiError,
    JsonObject,
    ResourceSpec,
    already_exists,
    bad_request,
    conflict,
    expired,
    not_found,
    too_large,
)
from tests.fakekube.selectors import Selector

Key = tuple[str, str, str]  # (plural, namespace or "", name)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class Event:
    """One write, kept in history: deep copies of the object after and before it."""

    rv: int
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    spec: ResourceSpec
    namespace: str
    obj: JsonObject
    prev: JsonObject | None


@dataclass(frozen=True)
class WatchEvent:
    type: str
    object: JsonObject

    def line(self) -> bytes:
        return json.dumps({"type": self.type, "object": self.object}).encode() + b"\n"


class Watcher:
    """One open watch: the events it should see, queued in order; None means "close"."""

    def __init__(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        selector: Selector,
        *,
        bookmarks: bool,
        after: int,
    ) -> None:
        self.spec = spec
        self.namespace = namespace
        self.selector = selector
        self.bookmarks = bookmarks
        self.after = after
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

    def offer(self, event: Event) -> None:
        if event.spec != self.spec or event.rv <= self.after:
            return
        if self.namespace is not None and event.namespace != self.namespace:
            return
        seen = self._as_seen(event)
        if seen is not None:
            self.queue.put_nowait(seen)

    def _as_seen(self, event: Event) -> WatchEvent | None:
        """An object entering the selector is ADDED, one leaving it is DELETED (real semantics)."""
        now = self.selector.matches(event.obj)
        if event.type != "MODIFIED":
            return WatchEvent(event.type, event.obj) if now else None
        before = event.prev is not None and self.selector.matches(event.prev)
        if now:
            return WatchEvent("MODIFIED" if before else "ADDED", event.obj)
        if before and event.prev is not None:
            gone = copy.deepcopy(event.prev)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return WatchEvent("DELETED", gone)
        return None


class Store:
    def __init__(
        self, resources: Iterable[ResourceSpec] = RESOURCES, *, history_limit: int | None = None
    ) -> None:
        self._specs: dict[str, ResourceSpec] = {}
        for spec in resources:
            if spec.plural in self._specs:
                raise ValueError(f"two served resources are named {spec.plural!r}")
            self._specs[spec.plural] = spec
        self.resource_version = 0
        self._objects: dict[Key, JsonObject] = {}
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        self._oldest = 0  # a watch or exact list from a resourceVersion below this gets 410
        self._watchers: set[Watcher] = set()
        self._conflicts: Counter[Key] = Counter()
        self.closed = False

    @property
    def resources(self) -> tuple[ResourceSpec, ...]:
        return tuple(self._specs.values())

    def spec(self, plural: str) -> ResourceSpec:
        try:
            return self._specs[plural]
        except KeyError:
            served = ", ".join(sorted(self._specs))
            raise KeyError(f"unknown resource {plural!r}: the fake serves {served}") from None

    # ---- reads

    def get(self, spec: ResourceSpec, namespace: str, name: str) -> JsonObject:
        return copy.deepcopy(self._current(spec, namespace, name))

    def list_objects(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        selector: Selector,
        *,
        exact_rv: int | None = None,
    ) -> tuple[list[JsonObject], int]:
        """Objects in key order, and the resourceVersion of that state."""
        if exact_rv is None:
            state, rv = self._objects, self.resource_version
        else:
            state, rv = self._state_at(exact_rv), exact_rv
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(state.items())
            if plural == spec.plural
            and (namespace is None or ns == namespace)
            and selector.matches(obj)
        ]
        return items, rv

    def _state_at(self, rv: int) -> dict[Key, JsonObject]:
        if rv > self.resource_version:
            raise too_large(rv, self.resource_version)
        if rv < self._oldest:
            raise expired(rv, self._oldest)
        state = dict(self._objects)
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            key = _key(event.spec, event.namespace, event.obj["metadata"]["name"])
            if event.prev is None:
                del state[key]
            else:
                state[key] = event.prev
        return state

    def _current(self, spec: ResourceSpec, namespace: str, name: str) -> JsonObject:
        obj = self._objects.get(_key(spec, namespace, name))
        if obj is None:
            raise not_found(spec, name)
        return obj

    # ---- writes

    def create(
        self, spec: ResourceSpec, namespace: str, body: Any, *, scope: Scope = "main"
    ) -> JsonObject:
        obj = prepare_create(spec, namespace, body, scope)
        name = obj["metadata"]["name"]
        if _key(spec, namespace, name) in self._objects:
            raise already_exists(spec, name)
        return self._commit(spec, namespace, "ADDED", obj, None)

    def update(
        self,
        spec: ResourceSpec,
        namespace: str,
        name: str,
        change: Callable[[JsonObject], Any],
        *,
        scope: Scope = "main",
    ) -> JsonObject:
        """Replace or patch one object: `change` gets a copy of the current object and returns
        the requested new one; the subresource rules then decide what is stored."""
        old = self._current(spec, namespace, name)
        key = _key(spec, namespace, name)
        if scope != "direct" and self._conflicts[key] > 0:
            self._conflicts[key] -= 1
            raise conflict(spec, name)
        try:
            new = change(copy.deepcopy(old))
        except PatchFormatError as e:
            raise bad_request(str(e)) from e
        except PatchApplyError as e:
            raise ApiError(422, "Invalid", str(e), spec=spec, name=name) from e
        result = prepare_update(spec, old, new, scope)
        if result == old:
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no event
        old_meta, meta = old["metadata"], result["metadata"]
        if old_meta.get("deletionTimestamp") and not meta.get("finalizers"):
            # The last finalizer is gone: the object is deleted as it was stored (the real
            # server deletes instead of updating, so the DELETED object is the old one).
            return self._commit(spec, namespace, "DELETED", copy.deepcopy(old), old)
        return self._commit(spec, namespace, "MODIFIED", result, old)

    def delete(
        self,
        spec: ResourceSpec,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> tuple[JsonObject, bool]:
        """Delete now, or mark as deleting while finalizers remain; True if it is gone."""
        old = self._current(spec, namespace, name)
        meta = old["metadata"]
        if uid and uid != meta["uid"]:
            raise uid_mismatch(spec, name, uid, meta["uid"])
        if resource_version and resource_version != meta["resourceVersion"]:
            why = (
                f"Precondition failed: ResourceVersion in precondition: {resource_version}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}"
            )
            raise conflict(spec, name, why)
        if not meta.get("finalizers"):
            return self._commit(spec, namespace, "DELETED", copy.deepcopy(old), old), True
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(old), False
        marked = copy.deepcopy(old)
        marked["metadata"]["deletionTimestamp"] = now()
        marked["metadata"]["deletionGracePeriodSeconds"] = 0
        if "generation" in meta:
            marked["metadata"]["generation"] = meta["generation"] + 1
        return self._commit(spec, namespace, "MODIFIED", marked, old), False

    def _commit(
        self,
        spec: ResourceSpec,
        namespace: str,
        kind: Literal["ADDED", "MODIFIED", "DELETED"],
        obj: JsonObject,
        prev: JsonObject | None,
    ) -> JsonObject:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        key = _key(spec, namespace, obj["metadata"]["name"])
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        event = Event(
            self.resource_version, kind, spec, namespace, copy.deepcopy(obj), copy.deepcopy(prev)
        )
        self._history.append(event)
        if self._history_limit is not None and len(self._history) > self._history_limit:
            self._oldest = self._history.popleft().rv
        for watcher in self._watchers:
            watcher.offer(event)
        return copy.deepcopy(obj)

    # ---- watches

    def watch(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        selector: Selector,
        *,
        resource_version: str | None,
        bookmarks: bool,
        initial_events: bool | None = None,
    ) -> Watcher:
        """Open a watch with its backlog already queued: synthetic ADDED events for the current
        state (no resourceVersion, "0", or sendInitialEvents), or the history after the given
        resourceVersion. A resourceVersion older than the history raises 410 Expired."""
        requested = parse_rv(resource_version)
        if initial_events is None:  # no sendInitialEvents: the classic semantics
            initial_events = requested == 0
        if initial_events and requested > self.resource_version:
            raise too_large(requested, self.resource_version)
        if not initial_events and requested < self._oldest:
            raise expired(requested, self._oldest)
        # A resourceVersion from the future counts as seen; the real server would first wait
        # up to a few seconds for its cache to catch up, then answer 504.
        after = self.resource_version if initial_events else requested
        watcher = Watcher(spec, namespace, selector, bookmarks=bookmarks, after=after)
        if initial_events:
            items, _ = self.list_objects(spec, namespace, selector)
            for obj in items:
                watcher.queue.put_nowait(WatchEvent("ADDED", obj))
        else:
            for event in self._history:
                watcher.offer(event)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def bookmark_event(self, spec: ResourceSpec, *, initial_events_end: bool = False) -> WatchEvent:
        meta: JsonObject = {"resourceVersion": str(self.resource_version)}
        if initial_events_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        return WatchEvent(
            "BOOKMARK", {"kind": spec.kind, "apiVersion": spec.api_version, "metadata": meta}
        )

    def bookmark(self) -> None:
        """Every watch that allows bookmarks gets one now, after the events already queued."""
        for watcher in self._watchers:
            if watcher.bookmarks:
                watcher.queue.put_nowait(self.bookmark_event(watcher.spec))

    def open_watches(self, spec: ResourceSpec | None = None) -> int:
        return sum(1 for w in self._watchers if spec is None or w.spec == spec)

    def drop_watches(self) -> None:
        """End every open watch after the events already queued for it, as the real server
        does when a watch times out or an apiserver restarts; later events reach only the
        watches opened afterwards."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()

    def close_watchers(self) -> None:
        self.closed = True
        self.drop_watches()

    # ---- faults for tests

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: older resourceVersions get 410."""
        self._history.clear()
        self._oldest = self.resource_version

    def conflict_next(self, spec: ResourceSpec, namespace: str, name: str, times: int) -> None:
        self._conflicts[_key(spec, namespace, name)] += times


def parse_rv(text: str | None) -> int:
    """A resourceVersion from a query string, 0 when absent; 400 when not a number."""
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'resourceVersion: Invalid value: "{text}": must be an integer') from None
    if value < 0:
        raise bad_request(f'resourceVersion: Invalid value: "{text}": must not be negative')
    return value


def _key(spec: ResourceSpec, namespace: str | None, name: str) -> Key:
    return (spec.plural, namespace or "", name)
