"""Sample objects and small readers shared by the fake API server's own tests."""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes_asyncio.client import ApiException

G, V = "serving.kserve.io", "v1alpha1"
CACHES, GROUPS = "localmodelcaches", "localmodelnodegroups"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def cache(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "LocalModelCache",
        "metadata": meta,
        "spec": {"sourceModelUri": f"hf://acme/{name}", "nodeGroups": ["a100"], **spec},
    }


def status_of(error: ApiException) -> dict[str, Any]:
    assert error.body is not None
    body: dict[str, Any] = json.loads(error.body)
    return body
