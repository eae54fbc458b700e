"""The one interface both stores implement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import orjson

from modelcache.contract.errors import ModelCacheError, PermanentError, TemporaryError
from modelcache.contract.objects import JsonObject
from modelcache.coordinator.registry import Registry


class ObjectNotFoundError(ModelCacheError, KeyError):
    """The named object does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class ObjectConflictError(PermanentError):
    """The object changed (or exists) in a way the request did not expect."""


class StoreUnavailableError(TemporaryError):
    """The backing store cannot be reached right now; try again."""


@dataclass(frozen=True, slots=True)
class StatusJson:
    """A status rendered as JSON once, for REST and the stores alike (a cache's is some 400 kB
    at 10,000 nodes): a store that writes JSON writes these bytes; one that patches field by
    field parses them back."""

    json: bytes

    def value(self) -> JsonObject:
        parsed: JsonObject = orjson.loads(self.json)
        return parsed


@dataclass(slots=True)
class StatusBatch:
    """Everything one status-writer tick wants persisted, written in one go where possible."""

    caches: dict[str, StatusJson] = field(default_factory=dict)  # name -> status
    groups: dict[str, JsonObject] = field(default_factory=dict)  # name -> status
    nodes: dict[str, JsonObject] = field(default_factory=dict)  # name -> LocalModelNode
    removed_nodes: set[str] = field(default_factory=set)
    agents: dict[str, JsonObject] = field(default_factory=dict)  # name -> agent record

    def __bool__(self) -> bool:
        return bool(self.caches or self.groups or self.nodes or self.removed_nodes or self.agents)


class Store(Protocol):
    name: str
    keeps_node_objects: bool
    """`write` persists `StatusBatch.nodes` (LocalModelNode objects): the kube store does."""
    keeps_agent_records: bool
    """`write` persists `StatusBatch.agents`: the embedded store does, and derives the nodes."""

    async def load(self, registry: Registry) -> None:
        """Load every object into the registry."""

    async def follow(self, registry: Registry) -> None:
        """Keep the registry current with changes made elsewhere, until cancelled (the kube store
        watches; the embedded store has no other writer and just idles)."""

    async def close(self) -> None: ...

    async def put_cache(self, raw: JsonObject) -> JsonObject:
        """Create or replace (spec and metadata; never status). Returns the stored object."""

    async def delete_cache(self, name: str) -> JsonObject | None:
        """Start deleting: the object stays, marked, until `release_cache` drops the finalizer.
        Returns the marked object, or None when it was removed at once (no finalizer)."""

    async def release_cache(self, name: str) -> None:
        """Remove our finalizer from a deleted cache, so it goes away."""

    async def put_group(self, raw: JsonObject) -> JsonObject: ...

    async def delete_group(self, name: str) -> None: ...

    async def write(self, batch: StatusBatch) -> None:
        """Persist statuses, LocalModelNode objects and agent records."""


@dataclass(frozen=True, slots=True)
class ReviewedToken:
    """What the API server said about a bearer token (a TokenReview's status)."""

    authenticated: bool
    username: str = ""
    node: str | None = None
    """The node of the pod the token is bound to (`authentication.kubernetes.io/node-name`,
    Kubernetes >= 1.30); None for tokens not bound to a pod on a node."""
    pod: str | None = None
    audiences: tuple[str, ...] = ()
    error: str = ""


@runtime_checkable
class TokenReviewer(Protocol):
    """A store that can ask the Kubernetes API server who a bearer token belongs to."""

    async def review_token(self, token: str, audience: str) -> ReviewedToken:
        """Raises `StoreUnavailableError` when the API server cannot answer now, and a
        `ModelCacheError` when it refuses to (RBAC)."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A coordination.k8s.io/v1 Lease as leader election reads and writes it."""

    holder: str
    """holderIdentity; empty when nobody holds it (released)."""
    duration_seconds: int
    acquire_time: str | None = None
    """RFC 3339 with microseconds (a MicroTime), as the holder's clock read it."""
    renew_time: str | None = None
    transitions: int = 0
    version: str = ""
    """metadata.resourceVersion the record was read at: an update succeeds only while the Lease
    is still at that version (optimistic concurrency)."""


@runtime_checkable
class LeaseKeeper(Protocol):
    """A store that can hold the leader-election Lease (the kube store)."""

    async def get_lease(self, name: str) -> LeaseRecord | None:
        """The Lease in the store's namespace, or None when it does not exist."""

    async def create_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        """Raises `ObjectConflictError` when it exists already (another replica was quicker)."""

    async def update_lease(self, name: str, record: LeaseRecord) -> LeaseRecord:
        """Replace it if it is still at `record.version`, else raise `ObjectConflictError`."""


@runtime_checkable
class PodLabeller(Protocol):
    """A store that can label this replica's own pod (the kube store): the leader marks its pod
    so that the Service, which selects by that label, sends agents and users to it alone."""

    async def patch_pod_labels(self, pod: str, labels: Mapping[str, str | None]) -> None:
        """Merge patch of the pod's `metadata.labels` in the store's namespace (None removes a
        label). Raises `ObjectNotFoundError` when there is no such pod."""
