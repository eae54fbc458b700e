"""The Kubernetes store: the real CRs, through kubernetes_asyncio (this package is the only code
that imports it).

Reads (`watching.py`): list, then watch from the list's resourceVersion with bookmarks; a 410 Gone
re-lists (the registry is replaced with the listing, so deletions missed while away are noticed
too); each node's last report comes back from its LocalModelNode (`restoring.py`) at load. Writes
(`writing.py`): spec and metadata through create/replace with optimistic concurrency, statuses
through the status subresource as JSON merge patches that carry only what changed (a key that went
away is sent as null), 409 Conflict retried on a fresh read. The leader-election Lease is read and
replaced at the version read (`leases.py`; `leading.py` runs the election), and the leader labels
its own pod for the Service. Agents' tokens are checked by TokenReview (`reviews.py`). `client.py`
holds the one ApiClient and turns the API server's failures into our errors; `store.py` puts the
parts together behind the `Store` protocol.
"""

from modelcache.coordinator.stores.kube.store import KubeStore

__all__ = ["KubeStore"]
