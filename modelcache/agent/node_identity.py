"""Which node group this node is in, read from its own Node object.

One GET on the agent's own Node is all it needs (RBAC: `get` on `nodes`, restricted to that
name), so a plain request with the pod's service-account token does the job; the Kubernetes
client library stays with the coordinator's store.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp

from modelcache.agent.settings import KubeAccess
from modelcache.contract.errors import AccessDeniedError, PermanentError, TemporaryError


async def read_node_group(
    session: aiohttp.ClientSession, kube: KubeAccess, node: str, label: str
) -> str | None:
    """The value of `label` on Node `node`; None when the node carries no such label."""
    try:
        headers, context = await asyncio.to_thread(_credentials, kube)
    except OSError as e:
        raise PermanentError(
            f"cannot read the service-account token or CA ({e}): mount the token "
            "(automountServiceAccountToken: true) or pass --node-group"
        ) from e
    url = f"{kube.api_url}/api/v1/nodes/{node}"
    try:
        async with session.get(url, headers=headers, ssl=context or True) as response:
            if response.status in (401, 403):
                raise AccessDeniedError(
                    f"the API server refused to show Node {node} ({response.status}): grant the "
                    "agent's service account `get` on nodes, or pass --node-group"
                )
            if response.status == 404:
                raise TemporaryError(
                    f"Node {node} not found at {kube.api_url}: check --node-name / NODE_NAME"
                )
            if response.status >= 400:
                raise TemporaryError(f"reading Node {node} failed with {response.status}")
            body = await response.json()
    except aiohttp.ContentTypeError as e:
        raise TemporaryError(
            f"{url} answered something other than JSON: is --kube-api an API server?"
        ) from e
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TemporaryError(f"cannot reach the API server at {kube.api_url}: {e}") from e
    labels = (body.get("metadata") or {}).get("labels") or {}
    value = labels.get(label)
    return value if isinstance(value, str) and value else None


def _credentials(kube: KubeAccess) -> tuple[dict[str, str], ssl.SSLContext | None]:
    headers = {"Accept": "application/json"}
    if kube.token_file is not None:
        # Read on every call: the kubelet rotates projected tokens on disk.
        headers["Authorization"] = f"Bearer {Path(kube.token_file).read_text().strip()}"
    context = ssl.create_default_context(cafile=str(kube.ca_file)) if kube.ca_file else None
    return headers, context
