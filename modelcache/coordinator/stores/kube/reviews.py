"""Agents' tokens, checked by the API server's TokenReview against the audience we asked for."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio import client

from modelcache.contract.objects import JsonObject
from modelcache.coordinator.stores.base import ReviewedToken
from modelcache.coordinator.stores.kube.client import KubeConnection, read_json

REVIEW_CONCURRENCY = 16  # 10,000 agents starting at once must not open 10,000 connections
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"


class TokenReviews:
    """TokenReviews, at most REVIEW_CONCURRENCY in flight (agents start all at once)."""

    def __init__(self, connection: KubeConnection) -> None:
        self._connection = connection
        self._review_limit = asyncio.Semaphore(REVIEW_CONCURRENCY)

    async def review_token(self, token: str, audience: str) -> ReviewedToken:
        """Ask the API server who `token` belongs to (needs `create` on tokenreviews)."""
        api = client.AuthenticationV1Api(await self._connection.api_client())
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience]),
        )
        raw_kwargs: dict[str, Any] = {"_preload_content": False}

        async def review() -> JsonObject:
            return await read_json(await api.create_token_review(body, **raw_kwargs))

        async with self._review_limit:
            raw = await self._connection.call(review, "reviewing an agent's token")
        return reviewed_token(raw, audience)


def reviewed_token(raw: JsonObject, audience: str) -> ReviewedToken:
    """A TokenReview's status, trusting only what matches the audience we asked for (a server
    that answers without `status.audiences` did not check it: the token is not ours)."""
    status = raw.get("status") or {}
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    audiences = tuple(status.get("audiences") or ())

    def first(key: str) -> str | None:
        values = extra.get(key) or []
        return str(values[0]) if values else None

    authenticated = bool(status.get("authenticated")) and audience in audiences
    error = str(status.get("error") or "")
    if status.get("authenticated") and not authenticated:
        error = f"the token is not for audience {audience!r} (it is for {list(audiences)})"
    return ReviewedToken(
        authenticated=authenticated,
        username=str(user.get("username") or ""),
        node=first(NODE_NAME_KEY),
        pod=first(POD_NAME_KEY),
        audiences=audiences,
        error=error,
    )
