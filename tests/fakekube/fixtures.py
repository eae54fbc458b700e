"""Pytest fixtures: a fake API server per test, a kubeconfig for it, and a handle to its state.

The handle's helpers write straight into the store (same resourceVersions, same watch events
as API writes) but skip the API's subresource rules, so a test can seed any state, status
included, in one call.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration, CustomObjectsApi

from tests.fakekube.patches import merge_patch
from tests.fakekube.resources import ApiError, JsonObject, ResourceSpec
from tests.fakekube.selectors import parse_selector
from tests.fakekube.server import FakeKube, RequestRecord, start_fake_kube


@dataclass
class FakeKubeHandle:
    server: FakeKube
    url: str
    kubeconfig: Path

    @property
    def requests(self) -> builtins.list[RequestRecord]:
        """Every request received, in order: (method, path, query)."""
        return self.server.requests

    def writes(self, resource: str | None = None) -> builtins.list[RequestRecord]:
        """The requests that could change state (not GET), optionally for one resource."""
        return [
            r
            for r in self.server.requests
            if r.method not in ("GET", "HEAD") and (resource is None or f"/{resource}" in r.path)
        ]

    @property
    def resource_version(self) -> int:
        return self.server.store.resource_version

    @property
    def bookmark_interval(self) -> float | None:
        return self.server.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float | None) -> None:
        self.server.bookmark_interval = seconds

    def issue_token(
        self,
        token: str,
        *,
        service_account: str = "modelcache-system:modelcache-agent",
        node: str | None = None,
        pod: str | None = None,
        audiences: Iterable[str] = ("modelcache",),
    ) -> str:
        """Make `token` a projected service account token (NAMESPACE:NAME) that TokenReview
        accepts for `audiences`; with a `node`, bound to a pod there (default pod name:
        modelcache-agent-NODE). Returns the token."""
        self.server.tokens.issue(
            token, service_account=service_account, node=node, pod=pod, audiences=audiences
        )
        return token

    def revoke_token(self, token: str) -> None:
        """TokenReview refuses `token` from now on (its pod was deleted)."""
        self.server.tokens.tokens.pop(token, None)

    def token_reviews(self) -> int:
        """How many TokenReviews were asked for."""
        return sum(1 for r in self.server.requests if r.path.endswith("/tokenreviews"))

    def create(self, resource: str, obj: Mapping[str, Any]) -> JsonObject:
        """Store a new object as given (status included); the server fills in metadata."""
        spec = self._spec(resource)
        namespace = (obj.get("metadata") or {}).get("namespace", "") if spec.namespaced else ""
        return self.server.store.create(spec, namespace, dict(obj), scope="direct")

    def get(self, resource: str, name: str, namespace: str = "") -> JsonObject:
        """The stored object; raises ApiError (code 404) when there is none."""
        return self.server.store.get(self._spec(resource), namespace, name)

    def exists(self, resource: str, name: str, namespace: str = "") -> bool:
        try:
            self.get(resource, name, namespace)
        except ApiError as e:
            if e.code == 404:
                return False
            raise
        return True

    def patch(
        self, resource: str, name: str, patch: Mapping[str, Any], namespace: str = ""
    ) -> JsonObject:
        """JSON merge patch onto the whole object, status included. Removing the last finalizer
        of an object being deleted deletes it, as through the API."""
        return self.server.store.update(
            self._spec(resource),
            namespace,
            name,
            lambda current: merge_patch(current, dict(patch)),
            scope="direct",
        )

    def delete(self, resource: str, name: str, namespace: str = "") -> JsonObject:
        """Delete as the API does: an object with finalizers only gets a deletionTimestamp."""
        obj, _ = self.server.store.delete(self._spec(resource), namespace, name)
        return obj

    def compact(self) -> None:
        """Forget the event history: watches and exact lists from older versions get 410."""
        self.server.store.compact()

    def conflict_next(self, resource: str, name: str, times: int = 1, namespace: str = "") -> None:
        """The next `times` API updates of the object (PUT or PATCH, main or /status) answer
        409 Conflict without being applied."""
        self.server.store.conflict_next(self._spec(resource), namespace, name, times)

    def bookmark(self) -> None:
        """Every open watch that allows bookmarks gets a BOOKMARK event now."""
        self.server.store.bookmark()

    def drop_watches(self) -> None:
        """End every open watch stream now (cleanly, as on a server-side watch timeout);
        clients that watch forever reconnect from the last resourceVersion they saw."""
        self.server.store.drop_watches()

    def open_watches(self, resource: str | None = None) -> int:
        spec = None if resource is None else self._spec(resource)
        return self.server.store.open_watches(spec)

    async def wait_for_watches(self, resource: str, count: int = 1, *, within: float = 5.0) -> None:
        """Wait until `count` watches on `resource` are open: a test's changes made after that
        reach them as live events."""
        async with asyncio.timeout(within):
            while self.open_watches(resource) < count:
                await asyncio.sleep(0.01)

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str = ""
    ) -> builtins.list[JsonObject]:
        selector = parse_selector(label_selector, None)
        items, _ = self.server.store.list_objects(self._spec(resource), namespace, selector)
        return items

    def _spec(self, resource: str) -> ResourceSpec:
        return self.server.store.spec(resource)


async def patch(
    crd: CustomObjectsApi,
    plural: str,
    name: str,
    body: dict[str, Any],
    *,
    status: bool = False,
    content_type: str = "application/merge-patch+json",
) -> dict[str, Any]:
    """Patch a serving.kserve.io/v1alpha1 object, by default as a JSON merge patch.

    The client sends a dict body as a JSON patch, which a real server refuses; its stubs omit
    the `_content_type` argument that its runtime accepts, hence this helper.
    """
    call = crd.patch_cluster_custom_object_status if status else crd.patch_cluster_custom_object
    options: dict[str, Any] = {"_content_type": content_type}
    patched: dict[str, Any] = await call(
        "serving.kserve.io", "v1alpha1", plural, name, body, **options
    )
    return patched


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig with one context for `url`, no credentials (JSON is valid YAML)."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(kubeconfig, indent=2))
    return path


@pytest.fixture
async def fake_kube(tmp_path: Path) -> AsyncIterator[FakeKubeHandle]:
    server = FakeKube(bookmark_interval=1.0)
    runner, url = await start_fake_kube(server)
    try:
        yield FakeKubeHandle(server, url, write_kubeconfig(tmp_path / "kubeconfig", url))
    finally:
        await runner.cleanup()


@pytest.fixture
async def kube_api(fake_kube: FakeKubeHandle) -> AsyncIterator[ApiClient]:
    """A real kubernetes_asyncio ApiClient configured from the fake's kubeconfig."""
    configuration = Configuration()
    await config.load_kube_config(
        config_file=str(fake_kube.kubeconfig), client_configuration=configuration
    )
    async with ApiClient(configuration) as api:
        yield api
