"""The coordinator's REST API (aiohttp): objects in Kubernetes shape, queries, and the agent calls.

Bad input never yields a 500: malformed bodies answer 400, invalid objects 422, both with
``{"error": ..., "field": ...}`` naming what to fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelcache.contract.agent_wire import (
    DesiredList,
    WantedModel,
    desired_to_raw,
    parse_registration,
    parse_status_report,
)
from modelcache.contract.errors import ModelCacheError, TemporaryError, UsageError
from modelcache.contract.objects import API_VERSION, FieldError, JsonObject
from modelcache.coordinator.authenticating import AgentGate, ForbiddenError, UnauthenticatedError
from modelcache.coordinator.leading import LeadershipLostError
from modelcache.coordinator.openapi import OPENAPI
from modelcache.coordinator.service import Coordinator, Pauser
from modelcache.coordinator.stores.base import ObjectConflictError, ObjectNotFoundError

log = logging.getLogger(__name__)
COORDINATOR = web.AppKey("coordinator", Coordinator)
AGENT_GATE = web.AppKey("agent_gate", AgentGate)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
"""What a standby replica answers; everything else waits for the leader."""


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return _json({"error": message, "field": field}, status=status)


def _unavailable(message: str) -> web.Response:
    response = _error(503, message)
    response.headers["Retry-After"] = "1"
    return response


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    coordinator = request.app[COORDINATOR]
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    started = time.perf_counter()
    try:
        standby = coordinator.standby
        if standby is not None and request.path not in PROBES:
            return _unavailable(standby)
        return await handler(request)
    except FieldError as e:
        return _error(422, e.reason, e.field)
    except UsageError as e:
        return _error(422, str(e))
    except ObjectNotFoundError as e:
        return _error(404, str(e))
    except ObjectConflictError as e:
        return _error(409, str(e))
    except UnauthenticatedError as e:
        coordinator.metrics.agent_refusals.labels("401").inc()
        response = _error(401, str(e))
        response.headers["WWW-Authenticate"] = 'Bearer realm="modelcache"'
        return response
    except ForbiddenError as e:
        coordinator.metrics.agent_refusals.labels("403").inc()
        return _error(403, str(e))
    except LeadershipLostError as e:
        return _unavailable(str(e))
    except TemporaryError as e:
        response = _error(503, str(e))
        if e.retry_after:
            response.headers["Retry-After"] = str(int(e.retry_after))
        return response
    except ModelCacheError as e:
        return _error(400, str(e))
    finally:
        coordinator.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise _empty()
    try:
        if "yaml" in request.content_type:
            return yaml.safe_load(raw)
        return orjson.loads(raw)  # agents report thousands of times a second: the fast parser
    except (orjson.JSONDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"the request body is not valid {_format(request)}: {e}") from e


def _empty() -> UsageError:
    return UsageError("the request body is empty: send a JSON or YAML object")


def _format(request: web.Request) -> str:
    return "YAML" if "yaml" in request.content_type else "JSON (send YAML as application/yaml)"


def _list(kind: str, items: list[JsonObject]) -> web.Response:
    return _json({"apiVersion": API_VERSION, "kind": f"{kind}List", "metadata": {}, "items": items})


# --- LocalModelCache / LocalModelNodeGroup / LocalModelNode ------------------------------------


async def list_caches(request: web.Request) -> web.StreamResponse:
    coordinator = request.app[COORDINATOR]
    max_age = coordinator.settings.status_render_max_age
    registry = coordinator.registry
    items, pause = [], Pauser()
    for name in sorted(registry.caches):
        if name in registry.caches:  # not deleted while other requests ran
            items.append(registry.cache_json(name, max_age))
        await pause.now_and_then()
    return await _json_pieces(request, registry.cache_list.of(items))


async def get_cache(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    name = request.match_info["name"]
    if name not in coordinator.registry.caches:
        raise ObjectNotFoundError(f"LocalModelCache {name} does not exist")
    max_age = coordinator.settings.status_render_max_age
    return _json_bytes(coordinator.registry.cache_json(name, max_age))


def _json(value: Any, status: int = 200) -> web.Response:
    return _json_bytes(orjson.dumps(value), status)


def _json_bytes(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


async def _json_pieces(request: web.Request, pieces: list[bytes]) -> web.StreamResponse:
    """A JSON body sent as the pieces it is made of, never joined (see `ListBody`)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = sum(len(p) for p in pieces)
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response


async def put_cache(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    name = request.match_info["name"]
    created = name not in coordinator.registry.caches
    stored = await coordinator.apply_cache(name, await _body(request))
    return _json(stored, status=201 if created else 200)


async def delete_cache(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    name = request.match_info["name"]
    await coordinator.delete_cache(name)
    registry = coordinator.registry
    if name in registry.caches:  # waiting for nodes to remove the files
        return _json(registry.cache_with_status(name), status=202)
    return _json({"kind": "Status", "status": "Success", "name": name})


async def list_groups(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    items = [registry.group_with_status(n) for n in sorted(registry.groups)]
    return _list("LocalModelNodeGroup", items)


async def get_group(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    name = request.match_info["name"]
    if name not in registry.groups:
        raise ObjectNotFoundError(f"LocalModelNodeGroup {name} does not exist")
    return _json(registry.group_with_status(name))


async def put_group(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    name = request.match_info["name"]
    created = name not in coordinator.registry.groups
    stored = await coordinator.apply_group(name, await _body(request))
    return _json(stored, status=201 if created else 200)


async def delete_group(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[COORDINATOR].delete_group(name)
    return _json({"kind": "Status", "status": "Success", "name": name})


async def list_nodes(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    return _list("LocalModelNode", [registry.node_object(n) for n in sorted(registry.nodes)])


async def get_node(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    name = request.match_info["name"]
    if name not in registry.nodes:
        raise ObjectNotFoundError(f"LocalModelNode {name} does not exist")
    return _json(registry.node_object(name))


# --- queries -------------------------------------------------------------------------------------


async def get_nodegroup_summary(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    group = request.match_info["group"]
    if group not in registry.groups and not registry.members(group):
        raise ObjectNotFoundError(f"node group {group} has neither a LocalModelNodeGroup nor nodes")
    return _json(registry.nodegroup_summary(group))


async def get_placement(request: web.Request) -> web.Response:
    registry = request.app[COORDINATOR].registry
    cache, group = request.query.get("cache"), request.query.get("nodegroup")
    if not cache:
        raise FieldError("cache", "is required: /v1/placement?cache=NAME&nodegroup=GROUP")
    if cache not in registry.caches:
        raise ObjectNotFoundError(f"LocalModelCache {cache} does not exist")
    groups = registry.caches[cache].node_groups
    group = group or groups[0]  # KServe: no group given means the cache's first group
    if group not in groups:
        raise FieldError("nodegroup", f"{group} is not one of {cache}'s node groups {list(groups)}")
    nodes = registry.placement_of(cache, group)
    return _json({"cache": cache, "nodeGroup": group, "nodes": nodes})


# --- agents --------------------------------------------------------------------------------------


async def _agent_node(request: web.Request, *, write: bool) -> str:
    """The node in the URL, once the request's token shows it may speak for it (before its body
    is read: a stranger's request costs no parsing)."""
    node = request.match_info["node"]
    authorization = request.headers.get("Authorization")
    await request.app[AGENT_GATE].check(node, authorization, write=write)
    return node


async def register_agent(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    node = await _agent_node(request, write=True)
    record = coordinator.register(node, parse_registration(await _body(request)))
    return _json(
        {
            "node": node,
            "nodeGroup": record.group,
            "heartbeatSeconds": coordinator.settings.heartbeat_interval,
        }
    )


async def desired_models(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    node = await _agent_node(request, write=False)
    registry = coordinator.registry
    record = registry.nodes.get(node)
    if record is None or record.registration is None:
        raise ObjectNotFoundError(f"node {node} has not registered: POST its registration first")
    if record.restored:
        # Known from the store only: its address (what its peers need) comes with a registration.
        raise ObjectNotFoundError(
            f"node {node} has not registered with this coordinator (it took over, or restarted, "
            "and knows the node from its LocalModelNode only): POST its registration first"
        )
    seen = _int_query(request, "generation", -1)
    wait = min(float(_int_query(request, "wait", 0)), coordinator.settings.long_poll_max)
    if seen == record.generation and wait > 0:
        changed = record.changed
        try:
            async with asyncio.timeout(wait):
                await changed.wait()
        except TimeoutError:
            pass
        record = registry.nodes.get(node)
        if record is None:
            raise ObjectNotFoundError(f"node {node} was removed")
    models = {
        m.storage_key: WantedModel(
            storage_key=m.storage_key,
            source_model_uri=m.source_model_uri,
            model_size_bytes=m.model_size,
            caches=m.caches,
            node_group=m.node_group,
            peers=registry.peers_for(record, m),
        )
        for m in record.desired
    }
    token = coordinator.peer_tokens.for_group(record.group)
    return _json(desired_to_raw(DesiredList(record.generation, record.group, models, token)))


def _int_query(request: web.Request, key: str, default: int) -> int:
    value = request.query.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as e:
        raise FieldError(key, f"{value!r} is not an integer") from e


async def report_status(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    node = await _agent_node(request, write=True)
    body = await _body(request)
    report = parse_status_report(body)
    generation = body.get("generation", 0) if isinstance(body, dict) else 0
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise FieldError("generation", "must be the integer generation of the applied list")
    coordinator.report(node, report, generation)
    return web.Response(status=204)


async def forget_agent(request: web.Request) -> web.Response:
    node = await _agent_node(request, write=True)
    request.app[COORDINATOR].forget_node(node)
    return web.Response(status=204)


# --- service endpoints ---------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready means: healthy, and able to serve or to take over. A standby in touch with the
    Lease is Ready too (a PodDisruptionBudget may then evict the leader, which hands over); the
    Service reaches the leader alone through the label the leader puts on its pod."""
    coordinator = request.app[COORDINATOR]
    leadership = coordinator.leadership
    if leadership is not None and not leadership.leading:
        body: dict[str, str | None] = {"status": "standby", "leader": leadership.holder or None}
        if leadership.lost is not None:
            return _json({**body, "status": "lost", "error": leadership.lost}, status=503)
        if not leadership.in_touch:
            error = f"has not read Lease {leadership.where} for a lease duration"
            return _json({**body, "error": error}, status=503)
        return _json(body)
    if not coordinator.ready.is_set():
        return _json({"status": "loading"}, status=503)
    body = {"status": "ready"}
    if leadership is not None:
        body["leader"] = leadership.identity
    return _json(body)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[COORDINATOR].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def build_app(coordinator: Coordinator, gate: AgentGate | None = None) -> web.Application:
    """`gate` checks the agent calls; without one they are open."""
    app = web.Application(middlewares=[errors_as_json], client_max_size=4 << 20)
    app[COORDINATOR] = coordinator
    app[AGENT_GATE] = gate or AgentGate(None)
    r = app.router
    r.add_get("/v1/localmodelcaches", list_caches)
    r.add_get("/v1/localmodelcaches/{name}", get_cache)
    r.add_put("/v1/localmodelcaches/{name}", put_cache)
    r.add_delete("/v1/localmodelcaches/{name}", delete_cache)
    r.add_get("/v1/localmodelnodegroups", list_groups)
    r.add_get("/v1/localmodelnodegroups/{name}", get_group)
    r.add_put("/v1/localmodelnodegroups/{name}", put_group)
    r.add_delete("/v1/localmodelnodegroups/{name}", delete_group)
    r.add_get("/v1/localmodelnodes", list_nodes)
    r.add_get("/v1/localmodelnodes/{name}", get_node)
    r.add_get("/v1/nodegroups/{group}", get_nodegroup_summary)
    r.add_get("/v1/placement", get_placement)
    r.add_post("/v1/agents/{node}/register", register_agent)
    r.add_get("/v1/agents/{node}/desired", desired_models)
    r.add_post("/v1/agents/{node}/status", report_status)
    r.add_delete("/v1/agents/{node}", forget_agent)
    r.add_get("/openapi.json", openapi)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    return app
