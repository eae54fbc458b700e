"""The HTTP face of the fake API server: kube-apiserver's paths, verbs and wire formats.

Routes are generated from the resource table, so every served resource gets the same verbs:
list and watch on the collection, create, get/replace/patch/delete on an object and, where the
resource has one, get/replace/patch on its `/status` subresource.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple

from aiohttp import web

from tests.fakekube.admission import Scope
from tests.fakekube.discovery import add_discovery_routes
from tests.fakekube.patches import json_patch, merge_patch
from tests.fakekube.resources import (
    RESOURCES,
    ApiError,
    ResourceSpec,
    bad_request,
    too_large,
    unsupported_media_type,
)
from tests.fakekube.selectors import Selector, parse_selector
from tests.fakekube.store import Store, WatchEvent, parse_rv
from tests.fakekube.tokenreviews import TOKEN_REVIEWS, TokenAuthority

_TRUE = frozenset({"1", "t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"0", "f", "F", "false", "False", "FALSE"})
_PATCH_TYPES = "application/json-patch+json, application/merge-patch+json"
_SMP = "application/strategic-merge-patch+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestRecord(NamedTuple):
    method: str
    path: str
    query: dict[str, str]


class FakeKube:
    """The fake server: a `Store` plus the routes that serve it.

    `bookmark_interval` (seconds; None for never) is read by every open watch on each wait,
    so a test may change it while watches are open.
    """

    def __init__(
        self,
        resources: Iterable[ResourceSpec] = RESOURCES,
        *,
        bookmark_interval: float | None = 1.0,
        history_limit: int | None = None,
    ) -> None:
        self.store = Store(resources, history_limit=history_limit)
        self.bookmark_interval = bookmark_interval
        self.requests: list[RequestRecord] = []
        self.tokens = TokenAuthority()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_statuses])
        app[FAKE_KUBE_KEY] = self
        app.on_shutdown.append(_close_watches)
        add_discovery_routes(app.router, self.store.resources)
        for spec in self.store.resources:
            _add_resource_routes(app.router, spec)
        app.router.add_post(TOKEN_REVIEWS, _review_token)
        return app


FAKE_KUBE_KEY = web.AppKey("fakekube", FakeKube)


async def start_fake_kube(
    fake: FakeKube, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 2.0
) -> tuple[web.AppRunner, str]:
    """Serve `fake` until `runner.cleanup()`; returns the runner and `http://HOST:PORT`.

    Open watches end when the server shuts down; handlers are cancelled when their client
    disconnects.
    """
    runner = web.AppRunner(
        fake.app(), handler_cancellation=True, shutdown_timeout=shutdown_timeout, access_log=None
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://{host}:{runner.addresses[0][1]}"


def _add_resource_routes(router: web.UrlDispatcher, spec: ResourceSpec) -> None:
    scope = "/namespaces/{namespace}" if spec.namespaced else ""
    collection = f"{spec.prefix}{scope}/{spec.plural}"
    item = collection + "/{name}"
    routes: list[tuple[str, str, Handler]] = [
        ("GET", collection, partial(_list_or_watch, spec)),
        ("POST", collection, partial(_create, spec)),
        ("GET", item, partial(_get, spec)),
        ("PUT", item, partial(_replace, spec, "main")),
        ("PATCH", item, partial(_patch, spec, "main")),
        ("DELETE", item, partial(_delete, spec)),
    ]
    if spec.status_subresource:
        routes += [
            ("GET", item + "/status", partial(_get, spec)),
            ("PUT", item + "/status", partial(_replace, spec, "status")),
            ("PATCH", item + "/status", partial(_patch, spec, "status")),
        ]
    if spec.namespaced:  # list and watch across all namespaces
        routes.append(("GET", f"{spec.prefix}/{spec.plural}", partial(_list_or_watch, spec)))
    for method, path, handler in routes:
        router.add_route(method, path, handler)


# ---- middleware and shutdown


@web.middleware
async def _statuses(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log every request; answer every refusal with a `Status` object, as the real server does."""
    fake = request.app[FAKE_KUBE_KEY]
    fake.requests.append(RequestRecord(request.method, request.path, dict(request.query)))
    try:
        return await handler(request)
    except ApiError as e:
        return _status_response(e)
    except web.HTTPNotFound:
        message = "the server could not find the requested resource"
        return _status_response(ApiError(404, "NotFound", message))
    except web.HTTPMethodNotAllowed:
        message = "the server does not allow this method on the requested resource"
        return _status_response(ApiError(405, "MethodNotAllowed", message))


def _status_response(error: ApiError) -> web.Response:
    return web.json_response(error.status(), status=error.code)


async def _close_watches(app: web.Application) -> None:
    app[FAKE_KUBE_KEY].store.close_watchers()


# ---- objects


async def _get(spec: ResourceSpec, request: web.Request) -> web.Response:
    store = request.app[FAKE_KUBE_KEY].store
    return web.json_response(store.get(spec, _namespace(request), request.match_info["name"]))


async def _create(spec: ResourceSpec, request: web.Request) -> web.Response:
    store = request.app[FAKE_KUBE_KEY].store
    body = await _json_body(request)
    return web.json_response(store.create(spec, _namespace(request), body), status=201)


async def _replace(spec: ResourceSpec, scope: Scope, request: web.Request) -> web.Response:
    store = request.app[FAKE_KUBE_KEY].store
    body = await _json_body(request)
    name = request.match_info["name"]
    updated = store.update(spec, _namespace(request), name, lambda _: body, scope=scope)
    return web.json_response(updated)


async def _patch(spec: ResourceSpec, scope: Scope, request: web.Request) -> web.Response:
    store = request.app[FAKE_KUBE_KEY].store
    content_type = request.content_type
    apply: Callable[[Any, Any], Any]
    if content_type == "application/merge-patch+json":
        apply = merge_patch
    elif content_type == "application/json-patch+json":
        apply = json_patch
    elif content_type == _SMP and not spec.custom:
        # Strategic merge patch, minus the strategy: lists are replaced, not merged by key.
        apply = merge_patch
    elif content_type == "application/apply-patch+yaml":
        raise ApiError(
            415, "UnsupportedMediaType", "server-side apply is not implemented by the fake"
        )
    else:
        accepted = _PATCH_TYPES if spec.custom else f"{_PATCH_TYPES}, {_SMP}"
        raise unsupported_media_type(content_type, accepted)
    patch = await _json_body(request, any_content_type=True)
    name = request.match_info["name"]
    patched = store.update(
        spec, _namespace(request), name, lambda current: apply(current, patch), scope=scope
    )
    return web.json_response(patched)


async def _delete(spec: ResourceSpec, request: web.Request) -> web.Response:
    store = request.app[FAKE_KUBE_KEY].store
    options = await _json_body(request, any_content_type=True, empty={})
    if not isinstance(options, dict):
        raise bad_request("DeleteOptions must be a JSON object")
    preconditions = options.get("preconditions") or {}
    obj, gone = store.delete(
        spec,
        _namespace(request),
        request.match_info["name"],
        uid=preconditions.get("uid"),
        resource_version=preconditions.get("resourceVersion"),
    )
    if not gone:  # waiting for finalizers: the object, with its deletionTimestamp
        return web.json_response(obj)
    details = {
        "name": obj["metadata"]["name"],
        "group": spec.group,
        "kind": spec.plural,
        "uid": obj["metadata"]["uid"],
    }
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    return web.json_response({**status, "details": details})


async def _review_token(request: web.Request) -> web.Response:
    """TokenReview is create-only and stores nothing: the answer is the review."""
    review = request.app[FAKE_KUBE_KEY].tokens.review(await _json_body(request))
    return web.json_response(review, status=201)


# ---- collections


async def _list_or_watch(spec: ResourceSpec, request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KUBE_KEY]
    query = request.query
    try:
        selector = parse_selector(query.get("labelSelector"), query.get("fieldSelector"))
    except ValueError as e:
        raise bad_request(str(e)) from e
    namespace = request.match_info.get("namespace")
    if _flag(query, "watch"):
        return await _watch(fake, spec, namespace, selector, request)
    rv_text, match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
    requested = parse_rv(rv_text)
    exact_rv = None
    if match == "Exact":
        if requested == 0:
            raise _invalid_options('resourceVersionMatch "Exact" needs a resourceVersion')
        exact_rv = requested
    elif match not in ("", "NotOlderThan"):
        raise _invalid_options(f'resourceVersionMatch: Unsupported value: "{match}"')
    elif match and not rv_text:
        raise _invalid_options("resourceVersionMatch is forbidden without a resourceVersion")
    elif requested > fake.store.resource_version:
        raise too_large(requested, fake.store.resource_version)
    items, rv = fake.store.list_objects(spec, namespace, selector, exact_rv=exact_rv)
    if not spec.custom:  # built-in lists carry kind and apiVersion only on the list
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
    return web.json_response(
        {
            "kind": f"{spec.kind}List",
            "apiVersion": spec.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }
    )


async def _watch(
    fake: FakeKube,
    spec: ResourceSpec,
    namespace: str | None,
    selector: Selector,
    request: web.Request,
) -> web.StreamResponse:
    query = request.query
    bookmarks = _flag(query, "allowWatchBookmarks")
    send_initial = _flag(query, "sendInitialEvents") if "sendInitialEvents" in query else None
    if send_initial is not None and (
        query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks
    ):
        raise _invalid_options(
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
            "allowWatchBookmarks=true"
        )
    seconds = _timeout_seconds(query.get("timeoutSeconds"))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    try:
        watcher = fake.store.watch(
            spec,
            namespace,
            selector,
            resource_version=query.get("resourceVersion"),
            bookmarks=bookmarks,
            initial_events=send_initial,
        )
    except ApiError as e:
        if e.code != 410:
            raise
        # Too old: the real server answers 200 and sends the error as the only event.
        await response.prepare(request)
        await response.write(WatchEvent("ERROR", e.status()).line())
        await response.write_eof()
        return response
    if send_initial:
        watcher.queue.put_nowait(fake.store.bookmark_event(spec, initial_events_end=True))
    try:
        await response.prepare(request)
        if not fake.store.closed:
            await _stream(fake, spec, watcher.queue, bookmarks, seconds, response)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-write
    finally:
        fake.store.unwatch(watcher)
    return response


async def _stream(
    fake: FakeKube,
    spec: ResourceSpec,
    queue: asyncio.Queue[WatchEvent | None],
    bookmarks: bool,
    seconds: float | None,
    response: web.StreamResponse,
) -> None:
    """Send queued events until the timeout or shutdown, and a BOOKMARK whenever the watch
    has been idle for `bookmark_interval`."""
    loop = asyncio.get_running_loop()
    deadline = math.inf if seconds is None else loop.time() + seconds
    next_bookmark = _next_bookmark(fake, loop, bookmarks)
    while True:
        wake = min(deadline, next_bookmark)
        try:
            async with asyncio.timeout_at(None if wake == math.inf else wake):
                event = await queue.get()
        except TimeoutError:
            if loop.time() >= deadline:
                return
            # A write may have queued an event since the timer fired: a bookmark now would
            # claim a resourceVersion whose event is still on its way. Wait for the next one.
            if queue.empty():
                await response.write(fake.store.bookmark_event(spec).line())
            next_bookmark = _next_bookmark(fake, loop, bookmarks)
            continue
        if event is None:
            return
        await response.write(event.line())


def _next_bookmark(fake: FakeKube, loop: asyncio.AbstractEventLoop, bookmarks: bool) -> float:
    if not bookmarks or not fake.bookmark_interval:
        return math.inf
    return loop.time() + fake.bookmark_interval


# ---- request parsing


def _namespace(request: web.Request) -> str:
    return request.match_info.get("namespace", "")


async def _json_body(
    request: web.Request, *, any_content_type: bool = False, empty: Any = None
) -> Any:
    raw = await request.read()
    if not raw.strip() and empty is not None:
        return empty
    if not any_content_type and "json" not in request.content_type:
        raise unsupported_media_type(request.content_type, "application/json")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from e


def _flag(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter, read like Go's strconv.ParseBool (the client sends `True`)."""
    value = query.get(name)
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(f'{name}: Invalid value: "{value}": not a boolean')


def _timeout_seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise bad_request(f'timeoutSeconds: Invalid value: "{text}"') from None
    return seconds if seconds > 0 else None


def _invalid_options(detail: str) -> ApiError:
    return ApiError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {detail}')
