"""The embedded store's status writes, read back from the SQLite file as `kubectl get` would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from modelcache.contract.objects import CACHE_KIND
from modelcache.coordinator.stores.base import StatusBatch, StatusJson
from modelcache.coordinator.stores.sqlite_store import SqliteStore
from tests.coordinator.conftest import cache


def stored(db: Path, name: str) -> dict[str, Any]:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT body FROM objects WHERE kind = ? AND name = ?", (CACHE_KIND, name)
        ).fetchone()
    body: dict[str, Any] = json.loads(row[0])
    return body


async def test_a_status_write_keeps_the_latest_spec_and_metadata(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SqliteStore(db)
    try:
        await store.put_cache(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        await store.write(
            StatusBatch(caches={"llama3": StatusJson(orjson.dumps({"copies": {"total": 1}}))})
        )
        changed = await store.put_cache(cache("llama3", "hf://o/llama3", "20Gi", "a100", "h100"))
        assert stored(db, "llama3")["status"] == {"copies": {"total": 1}}  # kept by the PUT
        await store.write(
            StatusBatch(caches={"llama3": StatusJson(orjson.dumps({"copies": {"total": 2}}))})
        )
    finally:
        await store.close()
    body = stored(db, "llama3")
    assert body["spec"]["nodeGroups"] == ["a100", "h100"]
    assert body["metadata"] == changed["metadata"]
    assert body["status"] == {"copies": {"total": 2}}


async def test_a_restarted_store_writes_statuses_into_the_stored_objects(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SqliteStore(db)
    try:
        created = await store.put_cache(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
    finally:
        await store.close()
    store = SqliteStore(db)
    try:
        await store.write(
            StatusBatch(caches={"llama3": StatusJson(orjson.dumps({"copies": {"total": 3}}))})
        )
    finally:
        await store.close()
    body = stored(db, "llama3")
    assert body["metadata"] == created["metadata"]
    assert body["spec"] == created["spec"]
    assert body["status"] == {"copies": {"total": 3}}


async def test_statuses_of_deleted_caches_are_not_written_back(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SqliteStore(db)
    try:
        await store.put_cache(cache("llama3", "hf://o/llama3", "10Gi", "a100"))
        marked = await store.delete_cache("llama3")
        assert marked is not None  # the finalizer keeps it until the files are gone
        await store.write(
            StatusBatch(caches={"llama3": StatusJson(orjson.dumps({"copies": {"total": 0}}))})
        )
        body = stored(db, "llama3")
        assert body["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
        assert body["status"] == {"copies": {"total": 0}}
        await store.release_cache("llama3")
        await store.write(
            StatusBatch(caches={"llama3": StatusJson(orjson.dumps({"copies": {"total": 0}}))})
        )
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT count(*) FROM objects").fetchone() == (0,)
    finally:
        await store.close()


async def test_agent_records_are_written_replaced_and_removed(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    store = SqliteStore(db)

    def agents() -> dict[str, Any]:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT name, body FROM objects WHERE kind = 'Agent'").fetchall()
        return {name: json.loads(body) for name, body in rows}

    record = {"metadata": {"name": "n1"}, "report": {"models": [{"state": "ModelDownloading"}]}}
    try:
        await store.write(StatusBatch(agents={"n1": record, "n2": {"metadata": {"name": "n2"}}}))
        assert agents() == {"n1": record, "n2": {"metadata": {"name": "n2"}}}
        newer = {"metadata": {"name": "n1"}, "appliedGeneration": 3}
        await store.write(StatusBatch(agents={"n1": newer}, removed_nodes={"n2"}))
        assert agents() == {"n1": newer}
    finally:
        await store.close()
