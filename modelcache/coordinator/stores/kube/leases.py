"""The leader-election Lease, read and replaced at the version read (`leading.py` runs the
election), and the label the leader puts on its own pod for the Service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from modelcache.contract.objects import JsonObject
from modelcache.coordinator.stores.base import LeaseRecord, ObjectNotFoundError
from modelcache.coordinator.stores.kube.client import (
    AS_MERGE_PATCH,
    RAW,
    KubeConnection,
    read_json,
)


class LeaseAccess:
    """Leases and pods in the store's namespace (the coordinator's namespaced Role)."""

    def __init__(self, connection: KubeConnection, namespace: str) -> None:
        self._connection = connection
        self._namespace = namespace

    async def get_lease(self, name: str) -> LeaseRecord | None:
        api = client.CoordinationV1Api(await self._connection.api_client())
        namespace = self._namespace

        async def read() -> JsonObject:
            return await read_json(await api.read_namespaced_lease(name, namespace, **RAW))

        try:
            return lease_record(
                await self._connection.call(read, f"reading Lease {namespace}/{name}")
            )
        except ObjectNotFoundError:
            return None

    async def create_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        api = client.CoordinationV1Api(await self._connection.api_client())
        namespace = self._namespace
        body: Any = raw_lease(name, namespace, record)  # the client sends a dict as it is

        async def create() -> JsonObject:
            return await read_json(await api.create_namespaced_lease(namespace, body, **RAW))

        return lease_record(
            await self._connection.call(create, f"creating Lease {namespace}/{name}")
        )

    async def update_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        api = client.CoordinationV1Api(await self._connection.api_client())
        namespace = self._namespace
        body: Any = raw_lease(name, namespace, record)  # the client sends a dict as it is

        async def replace() -> JsonObject:
            return await read_json(await api.replace_namespaced_lease(name, namespace, body, **RAW))

        return lease_record(
            await self._connection.call(replace, f"updating Lease {namespace}/{name}")
        )

    async def patch_pod_labels(self, pod: str, labels: Mapping[str, str | None]) -> None:
        """Needs `patch` on pods in the store's namespace (the coordinator's namespaced Role)."""
        core = client.CoreV1Api(await self._connection.api_client())
        namespace = self._namespace
        body = {"metadata": {"labels": dict(labels)}}

        async def patch() -> JsonObject:
            return await read_json(
                await core.patch_namespaced_pod(pod, namespace, body, **AS_MERGE_PATCH, **RAW)
            )

        await self._connection.call(patch, f"labelling pod {namespace}/{pod}")


def raw_lease(name: str, namespace: str, record: LeaseRecord) -> JsonObject:
    metadata: JsonObject = {"name": name, "namespace": namespace}
    if record.version:
        metadata["resourceVersion"] = record.version
    spec: JsonObject = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


def lease_record(raw: JsonObject) -> LeaseRecord:
    spec = raw.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str((raw.get("metadata") or {}).get("resourceVersion") or ""),
    )
