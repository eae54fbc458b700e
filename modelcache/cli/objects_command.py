"""`modelcache get` and `modelcache delete`, and what every object command shares: which objects
there are (with kubectl-style aliases), where the coordinator is, and one HTTP client for it.

The CLI speaks to the coordinator over its REST API only (never by importing it), so it works the
same against a coordinator on a laptop and one in a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from modelcache.cli.tables import render_table, table_rows
from modelcache.contract.errors import ModelCacheError, PermanentError, TemporaryError, UsageError
from modelcache.contract.objects import CACHE_KIND, NODE_GROUP_KIND, NODE_KIND, JsonObject

if TYPE_CHECKING:
    import aiohttp

# aiohttp and yaml are imported where they are used: `modelcache pull` loads this module for its
# argument parser and needs neither (aiohttp alone costs a tenth of a second to import).

DEFAULT_COORDINATOR: Final = "http://127.0.0.1:8080"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


@dataclass(frozen=True, slots=True)
class Resource:
    """One object type of the coordinator's REST API, as users may name it on the command line."""

    kind: str
    plural: str  # the collection's path segment under /v1/
    short: str  # what `modelcache get` lists them as, for hints
    aliases: frozenset[str]
    deletable: bool

    def path(self, name: str | None = None) -> str:
        return f"/v1/{self.plural}" + (f"/{quote(name, safe='')}" if name is not None else "")

    def ref(self, name: str) -> str:
        """``localmodelcache/llama3``, as kubectl prints an object."""
        return f"{self.kind.lower()}/{name}"


CACHES: Final = Resource(
    CACHE_KIND,
    "localmodelcaches",
    "caches",
    frozenset({"cache", "caches", "localmodelcache", "localmodelcaches", "lmc"}),
    deletable=True,
)
NODE_GROUPS: Final = Resource(
    NODE_GROUP_KIND,
    "localmodelnodegroups",
    "nodegroups",
    frozenset({"nodegroup", "nodegroups", "localmodelnodegroup", "localmodelnodegroups"}),
    deletable=True,
)
NODES: Final = Resource(
    NODE_KIND,
    "localmodelnodes",
    "nodes",
    frozenset({"node", "nodes", "localmodelnode", "localmodelnodes"}),
    deletable=False,
)
RESOURCES: Final = (CACHES, NODE_GROUPS, NODES)


def resource_named(word: str, *, deleting: bool = False) -> Resource:
    for resource in RESOURCES:
        if word.lower() in resource.aliases and (resource.deletable or not deleting):
            return resource
    if deleting and word.lower() in NODES.aliases:
        raise UsageError(
            "LocalModelNodes cannot be deleted: each one exists while the agent on its node "
            "reports; stop that agent (or remove the node) instead"
        )
    choices = "cache(s)/lmc, nodegroup(s)" + ("" if deleting else ", node(s)")
    raise UsageError(f"unknown object type {word!r}: use {choices}")


# --- the coordinator -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoordinatorEndpoint:
    url: str
    timeout: float = 30.0  # seconds for one whole request; the coordinator answers in milliseconds


def coordinator_endpoint(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> CoordinatorEndpoint:
    """`--coordinator` wins over MODELCACHE_COORDINATOR, which wins over the local default."""
    url = args.coordinator or environ.get("MODELCACHE_COORDINATOR") or DEFAULT_COORDINATOR
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--coordinator {url!r} is not an http:// or https:// URL")
    return CoordinatorEndpoint(url.rstrip("/"))


class CoordinatorUnreachableError(TemporaryError, ConnectionError):
    """No HTTP answer at all: nothing listens there, DNS failed, or the connection dropped."""


class CoordinatorRefusedError(ModelCacheError):
    """The coordinator answered with an error about the request (4xx) or itself (5xx)."""

    def __init__(self, message: str, *, status: int, field: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return self.status < 400

    def error(self) -> CoordinatorRefusedError:
        """The server's ``{"error", "field"}`` as one exception: ``FIELD: MESSAGE``."""
        body = self.body if isinstance(self.body, dict) else {}
        message = str(body.get("error") or f"HTTP {self.status}")
        field = body.get("field")
        text = f"{field}: {message}" if field else message
        if self.status >= 500:
            text += " (the coordinator failed; try again, or read its log)"
        return CoordinatorRefusedError(text, status=self.status, field=field)

    def checked(self) -> Any:
        if not self.ok:
            raise self.error()
        return self.body


class CoordinatorClient:
    """JSON over HTTP to one coordinator; every transport fault becomes one message that names the
    URL and what to do."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: CoordinatorEndpoint) -> None:
        self._session = session
        self._endpoint = endpoint

    async def call(self, method: str, path: str, body: JsonObject | None = None) -> Reply:
        import aiohttp

        url = self._endpoint.url
        data = None if body is None else json.dumps(body, default=_json_scalar)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, url + path, data=data, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectorError as e:
            raise CoordinatorUnreachableError(
                f"cannot reach the coordinator at {url}: {_reason(e)}; start it or pass "
                "--coordinator"
            ) from e
        except aiohttp.ClientError as e:
            raise CoordinatorUnreachableError(
                f"cannot reach the coordinator at {url}: {e}; start it or pass --coordinator"
            ) from e
        except TimeoutError as e:
            raise CoordinatorUnreachableError(
                f"the coordinator at {url} did not answer within {self._endpoint.timeout:.0f} s; "
                f"check {url}/readyz or pass --coordinator"
            ) from e
        try:
            return Reply(status, json.loads(text) if text.strip() else None)
        except json.JSONDecodeError as e:
            raise PermanentError(
                f"{url}{path} answered HTTP {status} with no JSON: is {url} a modelcache "
                "coordinator? pass --coordinator"
            ) from e


def _reason(error: aiohttp.ClientConnectorError) -> str:
    if isinstance(error.os_error, ConnectionRefusedError):
        return "connection refused"
    return error.os_error.strerror or str(error.os_error)


def _json_scalar(value: object) -> str:
    """YAML reads unquoted timestamps as datetimes: send them back as RFC 3339 text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


@contextlib.asynccontextmanager
async def coordinator_client(endpoint: CoordinatorEndpoint) -> AsyncIterator[CoordinatorClient]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield CoordinatorClient(session, endpoint)


def add_coordinator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        metavar="URL",
        help=f"coordinator REST URL (env MODELCACHE_COORDINATOR; default {DEFAULT_COORDINATOR})",
    )


# --- get / delete --------------------------------------------------------------------------------


def add_get_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "get",
        help="list or show caches, node groups or nodes",
        description=(
            "Show LocalModelCaches (cache, caches, lmc), LocalModelNodeGroups (nodegroup, "
            "nodegroups) or LocalModelNodes (node, nodes) as a table, or as JSON or YAML."
        ),
    )
    p.add_argument("type", metavar="TYPE", help="caches, nodegroups or nodes")
    p.add_argument("name", metavar="NAME", nargs="?", help="one object (default: all)")
    p.add_argument(
        "-o", "--output", choices=("json", "yaml"), help="print the objects as JSON/YAML"
    )
    add_coordinator_flag(p)
    p.set_defaults(run=run_get)


def add_delete_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "delete",
        help="delete a cache or a node group",
        description=(
            "Delete a LocalModelCache (its files are removed from every node first) or a "
            "LocalModelNodeGroup."
        ),
    )
    p.add_argument("type", metavar="TYPE", help="cache or nodegroup")
    p.add_argument("name", metavar="NAME")
    add_coordinator_flag(p)
    p.set_defaults(run=run_delete)


async def run_get(args: argparse.Namespace) -> int:
    resource = resource_named(args.type)
    endpoint = coordinator_endpoint(args, os.environ)
    async with coordinator_client(endpoint) as client:
        found = _found(resource, await client.call("GET", resource.path(args.name)))
    if args.output == "json":
        print(json.dumps(found, indent=2))
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(found, sort_keys=False))
    else:
        items = [found] if args.name else _items(found)
        if not items:
            print(f"No {resource.plural} found.", file=sys.stderr)
        else:
            rows = table_rows(resource.kind, items, datetime.now(UTC))
            sys.stdout.write(render_table(*rows))
    return EXIT_OK


def _found(resource: Resource, reply: Reply) -> Any:
    if reply.status == 404:
        raise CoordinatorRefusedError(
            f"{reply.error()}; `modelcache get {resource.short}` lists them",
            status=404,
            field=None,
        )
    return reply.checked()


def _items(listing: Any) -> list[JsonObject]:
    items = listing.get("items") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        raise PermanentError("the coordinator answered a list without items: is it up to date?")
    return items


async def run_delete(args: argparse.Namespace) -> int:
    resource = resource_named(args.type, deleting=True)
    endpoint = coordinator_endpoint(args, os.environ)
    async with coordinator_client(endpoint) as client:
        reply = await client.call("DELETE", resource.path(args.name))
    _found(resource, reply)
    if reply.status == 202:
        print(f"{resource.ref(args.name)} deletion started: waiting for nodes to remove the files")
    else:
        print(f"{resource.ref(args.name)} deleted")
    return EXIT_OK
