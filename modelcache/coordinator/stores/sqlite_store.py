"""The embedded store: one SQLite file, objects kept in Kubernetes shape.

The coordinator is the only writer, so the registry is the truth while it runs and SQLite is its
durable copy: objects are written through at once, statuses in one transaction per writer tick.
All SQLite calls run on one dedicated thread (the connection is not shared across threads).

At 10,000 nodes a cache's status is some 400 kB of JSON, rewritten every tick under load. Setting
it inside the stored body (`json_set`) made SQLite parse and re-render the whole old body each
time; instead the thread keeps each object's body without its status (what it last stored, so a
status write never undoes a spec change queued before it) and writes the whole row: a third of the
cost. Agent rows are upserted in place, all in one statement: `INSERT OR REPLACE` deletes and
re-inserts the row and its index entry, four times the work and pages to commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from modelcache.contract.agent_wire import (
    Registration,
    parse_registration,
    parse_status_report,
)
from modelcache.contract.objects import (
    CACHE_FINALIZER,
    CACHE_KIND,
    NODE_GROUP_KIND,
    FieldError,
    JsonObject,
    now_rfc3339,
)
from modelcache.coordinator.registry import Registry
from modelcache.coordinator.stores.base import (
    ObjectConflictError,
    ObjectNotFoundError,
    StatusBatch,
)

T = TypeVar("T")
AGENT_KIND = "Agent"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteStore:
    name = "sqlite"
    keeps_node_objects = False
    keeps_agent_records = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._bodies = _Bodies()  # touched on the SQLite thread only

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_thread, work)

    def _in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Every agent row and cache status is rewritten under load (~30 MB at 10,000 nodes):
            # kept in SQLite's page cache (2 MB by default) they are not read back each tick.
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.executescript(_SCHEMA)
        with self._db:  # one transaction per call
            return work(self._db)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, _close_quietly, self)
        self._executor.shutdown(wait=True)

    # --- loading --------------------------------------------------------------------------------

    async def load(self, registry: Registry) -> None:
        rows = await self._run(lambda db: db.execute("SELECT kind, body FROM objects").fetchall())
        by_kind: dict[str, list[JsonObject]] = {}
        for kind, body in rows:
            by_kind.setdefault(kind, []).append(json.loads(body))
        for raw in by_kind.get(NODE_GROUP_KIND, []):
            registry.upsert_group(raw)
        for raw in by_kind.get(CACHE_KIND, []):
            registry.upsert_cache(raw)
        for agent in by_kind.get(AGENT_KIND, []):
            _restore_agent(registry, agent)

    async def follow(self, registry: Registry) -> None:
        await asyncio.Event().wait()  # nothing else writes the file: idle until cancelled

    # --- objects --------------------------------------------------------------------------------

    async def put_cache(self, raw: JsonObject) -> JsonObject:
        bodies = self._bodies
        return await self._run(
            lambda db: bodies.saved(_put(db, CACHE_KIND, raw, finalizer=CACHE_FINALIZER))
        )

    async def put_group(self, raw: JsonObject) -> JsonObject:
        bodies = self._bodies
        return await self._run(
            lambda db: bodies.saved(_put(db, NODE_GROUP_KIND, raw, finalizer=None))
        )

    async def delete_cache(self, name: str) -> JsonObject | None:
        return await self._run(lambda db: self._bodies.marked(db, CACHE_KIND, name))

    async def release_cache(self, name: str) -> None:
        await self._run(lambda db: self._bodies.removed(db, CACHE_KIND, name))

    async def delete_group(self, name: str) -> None:
        if await self._run(lambda db: self._bodies.marked(db, NODE_GROUP_KIND, name)) is not None:
            raise AssertionError("node groups carry no finalizer")  # pragma: no cover

    async def write(self, batch: StatusBatch) -> None:
        await self._run(lambda db: _write_batch(db, batch, self._bodies))


class _Bodies:
    """Each cache's and group's stored body without its status, as compact JSON ending before
    its closing brace, kept by the SQLite thread as it writes them: a status write appends the
    status to it instead of asking SQLite to edit the stored JSON."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], bytes | None] = {}  # None: no such object

    def saved(self, obj: JsonObject) -> JsonObject:
        self._remember(obj["kind"], obj["metadata"]["name"], obj)
        return obj

    def marked(self, db: sqlite3.Connection, kind: str, name: str) -> JsonObject | None:
        marked = _mark_deleted(db, kind, name)
        self._remember(kind, name, marked)
        return marked

    def removed(self, db: sqlite3.Connection, kind: str, name: str) -> None:
        _remove(db, kind, name)
        self._heads[(kind, name)] = None

    def with_status(
        self, db: sqlite3.Connection, kind: str, name: str, status: bytes
    ) -> bytes | None:
        """The whole body to store, or None when the object is gone."""
        if (kind, name) not in self._heads:
            self._remember(kind, name, _get(db, kind, name))  # first write since the start
        head = self._heads[(kind, name)]
        if head is None:
            return None
        return head + b',"status":' + status + b"}"

    def _remember(self, kind: str, name: str, obj: JsonObject | None) -> None:
        if obj is None:
            self._heads[(kind, name)] = None
            return
        # Never empty: a stored object has at least apiVersion, kind, metadata and spec.
        self._heads[(kind, name)] = orjson.dumps({k: v for k, v in obj.items() if k != "status"})[
            :-1
        ]


def _close_quietly(store: SqliteStore) -> None:
    if store._db is not None:
        store._db.close()
        store._db = None


def _next_version(db: sqlite3.Connection) -> str:
    db.execute(
        "INSERT INTO counters (name, value) VALUES ('resourceVersion', 1) "
        "ON CONFLICT(name) DO UPDATE SET value = value + 1"
    )
    (value,) = db.execute("SELECT value FROM counters WHERE name = 'resourceVersion'").fetchone()
    return str(value)


def _get(db: sqlite3.Connection, kind: str, name: str) -> JsonObject | None:
    row = db.execute(
        "SELECT body FROM objects WHERE kind = ? AND name = ?", (kind, name)
    ).fetchone()
    return json.loads(row[0]) if row else None


def _save(db: sqlite3.Connection, kind: str, obj: JsonObject) -> None:
    db.execute(
        "INSERT OR REPLACE INTO objects (kind, name, body) VALUES (?, ?, ?)",
        (kind, obj["metadata"]["name"], json.dumps(obj, separators=(",", ":"))),
    )


def _put(
    db: sqlite3.Connection, kind: str, raw: JsonObject, *, finalizer: str | None
) -> JsonObject:
    """Create or replace, with the API server's metadata rules (uid, versions, generation)."""
    name = raw["metadata"]["name"]
    current = _get(db, kind, name)
    metadata = dict(raw["metadata"])
    if current is None:
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if finalizer:
            metadata["finalizers"] = [finalizer]
        status: Any = None
    else:
        old = current["metadata"]
        if current["metadata"].get("deletionTimestamp"):
            raise FieldError(
                "metadata.name", f"{name} is being deleted; wait, then create it again"
            )
        expected = metadata.get("resourceVersion")
        if expected and expected != old.get("resourceVersion"):
            raise ObjectConflictError(
                f"{kind} {name} changed since resourceVersion {expected}: get it again and retry"
            )
        spec_changed = current.get("spec") != raw.get("spec")
        metadata.update(
            uid=old["uid"],
            creationTimestamp=old["creationTimestamp"],
            generation=old.get("generation", 1) + (1 if spec_changed else 0),
            finalizers=old.get("finalizers", []),
        )
        status = current.get("status")
    metadata["resourceVersion"] = _next_version(db)
    stored: JsonObject = {
        "apiVersion": raw["apiVersion"],
        "kind": kind,
        "metadata": metadata,
        "spec": raw["spec"],
    }
    if status is not None:
        stored["status"] = status
    _save(db, kind, stored)
    return stored


def _mark_deleted(db: sqlite3.Connection, kind: str, name: str) -> JsonObject | None:
    current = _get(db, kind, name)
    if current is None:
        raise ObjectNotFoundError(f"{kind} {name} does not exist")
    if not current["metadata"].get("finalizers"):
        _remove(db, kind, name)
        return None
    current["metadata"].setdefault("deletionTimestamp", now_rfc3339())
    current["metadata"]["resourceVersion"] = _next_version(db)
    _save(db, kind, current)
    return current


def _remove(db: sqlite3.Connection, kind: str, name: str) -> None:
    db.execute("DELETE FROM objects WHERE kind = ? AND name = ?", (kind, name))


def _write_batch(db: sqlite3.Connection, batch: StatusBatch, bodies: _Bodies) -> None:
    statuses = [(CACHE_KIND, name, status.json) for name, status in batch.caches.items()]
    statuses += [(NODE_GROUP_KIND, name, orjson.dumps(s)) for name, s in batch.groups.items()]
    updates = []
    for kind, name, status in statuses:
        body = bodies.with_status(db, kind, name, status)
        if body is not None:
            updates.append((body.decode(), kind, name))
    db.executemany("UPDATE objects SET body = ? WHERE kind = ? AND name = ?", updates)
    # LocalModelNode objects are derived from agent records and not stored on their own here;
    # the agent records (registration + last report) are what a restart needs. All in one
    # statement: executemany gives the GIL back for each row and takes it again, and under load
    # each retake waits for the event loop's thread (1,000 rows took up to seconds).
    if batch.agents:
        db.execute(
            "INSERT INTO objects (kind, name, body) SELECT ?, key, value FROM json_each(?) "
            "WHERE true ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body",
            (AGENT_KIND, orjson.dumps(batch.agents).decode()),
        )
    if batch.removed_nodes:
        db.execute(
            "DELETE FROM objects WHERE kind = ? AND name IN (SELECT value FROM json_each(?))",
            (AGENT_KIND, orjson.dumps(sorted(batch.removed_nodes)).decode()),
        )


def _restore_agent(registry: Registry, body: JsonObject) -> None:
    """Bring back a node known before the restart; it stays NotReady until it reports again."""
    name = body["metadata"]["name"]
    raw_registration = body.get("registration")
    if raw_registration is None:
        return
    registration: Registration = parse_registration(raw_registration)
    record = registry.register(name, registration)
    record.last_seen = None
    if "report" in body:
        record.report = parse_status_report(body["report"])
        record.applied_generation = int(body.get("appliedGeneration", 0))
