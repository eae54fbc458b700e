"""The OpenAPI 3.1 description served at ``/openapi.json`` (kept beside the routes it describes)."""

from __future__ import annotations

from typing import Any, Final

from modelcache.coordinator.peering import MAX_PEERS


def _op(summary: str, *, body: str | None = None, ok: str = "200", **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "success", "content": {"application/json": {}}},
            "400": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
        },
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "description": body,
            "content": {"application/json": {}, "application/yaml": {}},
        }
    op.update(extra)
    return op


def _agent_op(summary: str, **kwargs: Any) -> dict[str, Any]:
    """An agent call: with --agent-auth, the node's bearer token (401 none or unknown, 403 another
    node's); the desired-list read only with --auth-reads."""
    op = _op(summary, **kwargs)
    op["security"] = [{"agentToken": []}, {}]
    op["responses"]["401"] = {"$ref": "#/components/responses/Error"}
    op["responses"]["403"] = {"$ref": "#/components/responses/Error"}
    return op


def _desired_op() -> dict[str, Any]:
    op = _agent_op(
        "Long poll of the models the node must hold, each with the node's peers for it; returns "
        "at once when the generation differs from the one given",
        parameters=[
            {"name": "generation", "in": "query", "schema": {"type": "integer"}},
            {"name": "wait", "in": "query", "schema": {"type": "integer", "maximum": 60}},
        ],
    )
    op["responses"]["200"]["content"]["application/json"] = {
        "schema": {"$ref": "#/components/schemas/Desired"}
    }
    return op


_STRING: Final = {"type": "string"}
_DESIRED: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["generation", "nodeGroup", "models"],
    "properties": {
        "generation": {"type": "integer"},
        "nodeGroup": {"type": ["string", "null"]},
        "peerToken": {
            "type": "string",
            "description": "The node group's token: what its agents show each other (absent "
            "for a node without a group)",
        },
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "storageKey",
                    "sourceModelUri",
                    "modelSizeBytes",
                    "caches",
                    "nodeGroup",
                ],
                "properties": {
                    "storageKey": _STRING,
                    "sourceModelUri": _STRING,
                    "modelSizeBytes": {"type": "integer"},
                    "caches": {"type": "array", "items": _STRING},
                    "nodeGroup": _STRING,
                    "peers": {
                        "type": "array",
                        "maxItems": MAX_PEERS,
                        "description": "Nodes of the group pulling or holding the model, with "
                        "their agent URL (absent: none, or peer fetching is off for the cache or "
                        "the group)",
                        "items": {
                            "type": "object",
                            "required": ["node", "url"],
                            "properties": {"node": _STRING, "url": _STRING},
                        },
                    },
                },
            },
        },
    },
}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_NODE = [{"name": "node", "in": "path", "required": True, "schema": {"type": "string"}}]


def _objects(kind: str, *, writable: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"parameters": _NAME, "get": _op(f"Get one {kind} with live status")}
    if writable:
        item["put"] = _op(f"Create or replace a {kind} (JSON or YAML)", body=kind)
        item["delete"] = _op(
            f"Delete a {kind} (202 while nodes still remove files)",
            responses={"202": {"description": "deletion in progress"}},
        )
    return item


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "modelcache coordinator", "version": "v1"},
    "paths": {
        "/v1/localmodelcaches": {"get": _op("List LocalModelCaches")},
        "/v1/localmodelcaches/{name}": _objects("LocalModelCache", writable=True),
        "/v1/localmodelnodegroups": {"get": _op("List LocalModelNodeGroups")},
        "/v1/localmodelnodegroups/{name}": _objects("LocalModelNodeGroup", writable=True),
        "/v1/localmodelnodes": {"get": _op("List LocalModelNodes")},
        "/v1/localmodelnodes/{name}": _objects("LocalModelNode", writable=False),
        "/v1/nodegroups/{group}": {
            "parameters": [
                {"name": "group", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": _op("Nodes, capacity, used bytes, models and their states in one node group"),
        },
        "/v1/placement": {
            "get": _op(
                "Nodes of a group holding a cache's model Downloaded",
                parameters=[
                    {
                        "name": "cache",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "nodegroup", "in": "query", "schema": {"type": "string"}},
                ],
            )
        },
        "/v1/agents/{node}/register": {
            "parameters": _NODE,
            "post": _agent_op(
                "Agent registration: nodeGroup, address, disk", body="RawRegistration"
            ),
        },
        "/v1/agents/{node}/desired": {"parameters": _NODE, "get": _desired_op()},
        "/v1/agents/{node}/status": {
            "parameters": _NODE,
            "post": _agent_op(
                "Full status report (also the heartbeat)", body="RawStatusReport", ok="204"
            ),
        },
        "/v1/agents/{node}": {"parameters": _NODE, "delete": _agent_op("Forget a node", ok="204")},
        "/healthz": {"get": _op("Liveness")},
        "/readyz": {"get": _op("Readiness: loaded, or a standby able to take over")},
        "/metrics": {"get": _op("Prometheus metrics")},
    },
    "components": {
        "schemas": {"Desired": _DESIRED},
        "securitySchemes": {
            "agentToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The node's token: its projected service account token "
                "(--agent-auth tokenreview) or its entry in --agent-tokens (tokens)",
            }
        },
        "responses": {
            "Error": {
                "description": "What is wrong and which field",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["error"],
                            "properties": {
                                "error": {"type": "string"},
                                "field": {"type": ["string", "null"]},
                            },
                        }
                    }
                },
            }
        },
    },
}
