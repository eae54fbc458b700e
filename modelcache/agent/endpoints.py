"""The agent's own HTTP surface: Prometheus metrics, probes, its status, verify-on-request, and
the peer routes its node group fetches chunks through (`peer_serving`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelcache.agent.keeping import ModelKeeper
from modelcache.agent.metrics import AgentMetrics
from modelcache.agent.peer_serving import PeerServer, add_peer_routes
from modelcache.agent.syncing import CoordinatorLink
from modelcache.contract.agent_wire import model_report_to_raw


@dataclass(slots=True)
class AgentState:
    keeper: ModelKeeper
    link: CoordinatorLink
    metrics: AgentMetrics
    node: str
    peer_server: PeerServer
    started: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a background task ends: the agent is unhealthy and exits."""


AGENT = web.AppKey("agent", AgentState)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[AGENT].metrics.registry
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    if request.app[AGENT].stopped.is_set():
        return _json({"status": "a background task stopped"}, status=500)
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once the disk is scanned: the agent knows what it holds, coordinator or not."""
    state = request.app[AGENT]
    body = {"registered": state.link.registered.is_set(), "nodeGroup": state.link.node_group}
    if not state.started:
        return _json({"status": "scanning the cache", **body}, status=503)
    return _json({"status": "ready", **body})


async def status(request: web.Request) -> web.Response:
    state = request.app[AGENT]
    return _json(
        {
            "node": state.node,
            "nodeGroup": state.link.node_group,
            "registered": state.link.registered.is_set(),
            "appliedGeneration": state.keeper.applied_generation,
            "models": [model_report_to_raw(r) for r in state.keeper.reports()],
        }
    )


async def verify(request: web.Request) -> web.Response:
    """Re-hash every published model (reads every byte); damaged ones are pulled again."""
    verdicts = await request.app[AGENT].keeper.verify_all()
    return _json({"models": verdicts})


def build_app(state: AgentState) -> web.Application:
    app = web.Application()
    app[AGENT] = state
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/verify", verify)
    add_peer_routes(app, state.peer_server)
    return app
