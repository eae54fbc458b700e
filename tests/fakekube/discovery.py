"""Discovery endpoints (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`),
enough for clients that look up resources before using them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from tests.fakekube.resources import JsonObject, ResourceSpec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def add_discovery_routes(router: web.UrlDispatcher, resources: tuple[ResourceSpec, ...]) -> None:
    # The generated client asks for `/version/`, `/api/`, `/apis/`: serve both spellings.
    routes: list[tuple[str, Handler]] = [
        ("/version", _version),
        ("/api", _core_versions),
        ("/apis", partial(_group_list, resources)),
    ]
    for group, version in sorted({(spec.group, spec.version) for spec in resources}):
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        served = tuple(s for s in resources if (s.group, s.version) == (group, version))
        routes.append((prefix, partial(_resource_list, group, version, served)))
    for path, handler in routes:
        router.add_get(path, handler)
        router.add_get(path + "/", handler)


async def _version(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0-fakekube",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.23",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    )


async def _core_versions(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
            ],
        }
    )


async def _group_list(resources: tuple[ResourceSpec, ...], request: web.Request) -> web.Response:
    groups: dict[str, list[str]] = {}
    for spec in resources:
        if spec.group and spec.version not in groups.setdefault(spec.group, []):
            groups[spec.group].append(spec.version)
    entries = []
    for group, versions in sorted(groups.items()):
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        entries.append({"name": group, "versions": listed, "preferredVersion": listed[0]})
    return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": entries})


async def _resource_list(
    group: str, version: str, served: tuple[ResourceSpec, ...], request: web.Request
) -> web.Response:
    resources: list[JsonObject] = []
    for spec in served:
        common = {"namespaced": spec.namespaced, "kind": spec.kind}
        resources.append(
            {"name": spec.plural, "singularName": spec.singular, "verbs": _VERBS, **common}
        )
        if spec.status_subresource:
            resources.append(
                {
                    "name": f"{spec.plural}/status",
                    "singularName": "",
                    "verbs": ["get", "patch", "update"],
                    **common,
                }
            )
    group_version = f"{group}/{version}" if group else version
    body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version}
    return web.json_response({**body, "resources": resources})
