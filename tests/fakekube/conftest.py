"""Fixtures for the fake API server's own tests: typed API objects on the fake's client."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient


@pytest.fixture
def crd(kube_api: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def core(kube_api: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)
