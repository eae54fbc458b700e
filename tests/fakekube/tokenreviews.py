"""TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`): a create-only virtual
resource that says whose a bearer token is. Tests issue tokens; the answers have the shape of a
Kubernetes >= 1.30 server's for projected service account tokens bound to a pod on a node."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.fakekube.resources import JsonObject, bad_request

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
"""Tokens reviewed without `spec.audiences` must be meant for the API server itself."""


@dataclass(frozen=True)
class IssuedToken:
    service_account: str  # NAMESPACE:NAME
    node: str | None
    pod: str | None
    audiences: tuple[str, ...]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class TokenAuthority:
    tokens: dict[str, IssuedToken] = field(default_factory=dict)

    def issue(
        self,
        token: str,
        *,
        service_account: str,
        node: str | None,
        pod: str | None,
        audiences: Iterable[str],
    ) -> None:
        if node is not None and pod is None:
            pod = f"modelcache-agent-{node}"
        self.tokens[token] = IssuedToken(service_account, node, pod, tuple(audiences))

    def review(self, body: object) -> JsonObject:
        spec = body.get("spec") if isinstance(body, dict) else None
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            raise bad_request("token is required for TokenReview in authentication")
        wanted = tuple(spec.get("audiences") or ()) if isinstance(spec, dict) else ()
        answer: JsonObject = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        issued = self.tokens.get(token)
        if issued is None:
            answer["status"] = {"user": {}, "error": "[invalid bearer token, token not found]"}
            return answer
        targets = wanted or API_AUDIENCES
        common = [a for a in targets if a in issued.audiences]
        if not common:
            answer["status"] = {
                "user": {},
                "error": f"[invalid bearer token, token audiences {list(issued.audiences)} is "
                f"invalid for the target audiences {list(targets)}]",
            }
            return answer
        namespace, _, name = issued.service_account.partition(":")
        key = "authentication.kubernetes.io/"
        extra: dict[str, list[str]] = {
            key + "credential-id": [f"JTI={uuid.uuid4()}"],
        }
        if issued.pod is not None:
            extra[key + "pod-name"] = [issued.pod]
            extra[key + "pod-uid"] = [str(uuid.uuid5(uuid.NAMESPACE_DNS, issued.pod))]
        if issued.node is not None:
            extra[key + "node-name"] = [issued.node]
            extra[key + "node-uid"] = [str(uuid.uuid5(uuid.NAMESPACE_DNS, issued.node))]
        answer["status"] = {
            "authenticated": True,
            "audiences": common,
            "user": {
                "username": f"system:serviceaccount:{namespace}:{name}",
                "uid": issued.uid,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "extra": extra,
            },
        }
        return answer
