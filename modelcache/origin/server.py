"""A local Hugging Face-compatible origin: the Hub's metadata API, resolve URLs and an LFS CDN.

Tests, benchmarks and the demo point real clients (huggingface_hub's `HfApi`, plain aiohttp)
at it. It speaks the Hub protocol closely enough that those clients cannot tell, and adds what
the real Hub cannot give: programmable faults, per-connection rate limits and byte counters.

Routes (`{rev}` may be a branch, a tag or a sha, with `/` sent as `%2F`):
  GET      /api/models/{owner}/{name}[/revision/{rev}]     model info      ("revision")
  GET      /api/models/{owner}/{name}/tree/{rev}[/{path}]  file listing    ("tree")
  GET HEAD /{owner}/{name}/resolve/{rev}/{path}            file or 302     ("resolve")
  GET HEAD /cdn/{sha256}?repo=...                          LFS blob        ("cdn")
  GET HEAD /files/{name}                                   plain file      ("file")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web
from aiolimiter import AsyncLimiter

from .faults import Faults, OriginStats
from .listing import model_info, tree_entries
from .repos import ServedFile, ServedRepo
from .streaming import Delivery, serve_file

__all__ = ["ORIGIN_KEY", "Faults", "Origin", "OriginStats", "start_origin"]

_TRUE_STRINGS = frozenset({"1", "true", "True", "TRUE", "yes"})


@dataclass(eq=False)
class Origin:
    """Everything the origin serves, and the knobs tests turn while it runs.

    Fields may be changed at any time; each request reads them when it arrives.
    """

    repos: dict[str, ServedRepo] = field(default_factory=dict)
    plain_files: dict[str, ServedFile] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    stats: OriginStats = field(default_factory=OriginStats)
    per_connection_rate: int | None = None
    total_rate: int | None = None
    """Bytes per second over all data responses together; set before serving."""
    tree_page_size: int = 1000
    redirect_lfs: bool = True
    last_modified: datetime = field(default_factory=lambda: datetime.now(UTC))
    _pipe: AsyncLimiter | None = field(default=None, init=False, repr=False)

    def add_repo(self, repo: ServedRepo) -> None:
        self.repos[repo.repo_id] = repo

    def app(self) -> web.Application:
        app = web.Application()
        app[ORIGIN_KEY] = self
        app.router.add_get("/api/models/{owner}/{name}", _model_info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{revision}", _model_info)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}", _tree)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}/{path:.+}", _tree)
        app.router.add_get("/api/models/{owner}/{name}/xet-read-token/{revision}", _xet_token)
        app.router.add_get("/{owner}/{name}/resolve/{revision}/{path:.+}", _resolve)
        app.router.add_get("/cdn/{sha256}", _cdn)
        app.router.add_get("/files/{name:.+}", _plain_file)
        return app

    def _delivery(self) -> Delivery:
        if self.total_rate and (self._pipe is None or self._pipe.max_rate != self.total_rate):
            self._pipe = AsyncLimiter(self.total_rate, 1.0)
        pipe = self._pipe if self.total_rate else None
        return Delivery(self.faults, self.stats, self.per_connection_rate, pipe)


ORIGIN_KEY = web.AppKey("modelcache_origin", Origin)


async def start_origin(
    origin: Origin, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 2.0
) -> tuple[web.AppRunner, str]:
    """Serve `origin` until `runner.cleanup()`; returns the runner and `http://HOST:PORT`.

    Handlers are cancelled when their client disconnects, and shutdown waits at most
    `shutdown_timeout` seconds for requests still running (a stalled body, say).
    """
    runner = web.AppRunner(
        origin.app(),
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    actual_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown_host}:{actual_port}"


def _error(status: int, code: str, message: str) -> web.Response:
    """An error the way the Hub sends it: huggingface_hub maps `X-Error-Code` to exceptions."""
    return web.json_response(
        {"error": message},
        status=status,
        headers={"X-Error-Code": code, "X-Error-Message": message},
    )


def _lookup(request: web.Request, route: str) -> tuple[Origin, ServedRepo, str] | web.Response:
    """Count the request, then find the repo and commit it names and check access to it."""
    origin = request.app[ORIGIN_KEY]
    origin.stats.requests[route] += 1
    repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
    repo = origin.repos.get(repo_id)
    if repo is None:
        return _error(404, "RepoNotFound", "Repository not found")
    if repo.gated:
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in origin.tokens:
            return _error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it"
                " and be authenticated to access it. Please log in.",
            )
    revision = request.match_info.get("revision", "main")
    sha = repo.resolve_revision(revision)
    if sha is None:
        return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
    return origin, repo, sha


async def _model_info(request: web.Request) -> web.StreamResponse:
    found = _lookup(request, "revision")
    if isinstance(found, web.Response):
        return found
    origin, repo, sha = found
    blobs = request.query.get("blobs", "") in _TRUE_STRINGS
    return web.json_response(model_info(repo, sha, last_modified=origin.last_modified, blobs=blobs))


async def _tree(request: web.Request) -> web.StreamResponse:
    found = _lookup(request, "tree")
    if isinstance(found, web.Response):
        return found
    origin, repo, _ = found
    prefix = request.match_info.get("path", "")
    recursive = request.query.get("recursive", "") in _TRUE_STRINGS
    entries = tree_entries(repo, prefix, recursive=recursive)
    if entries is None:
        return _error(404, "EntryNotFound", f"{prefix} does not exist on this revision")
    try:
        cursor = int(request.query.get("cursor", "0"))
    except ValueError:
        cursor = -1
    if cursor < 0:
        return web.json_response({"error": "invalid cursor"}, status=400)
    page_size = max(1, origin.tree_page_size)
    end = cursor + page_size
    headers: dict[str, str] = {}
    if end < len(entries):
        next_url = request.url.update_query(cursor=str(end))
        headers["Link"] = f'<{next_url}>; rel="next"'
    return web.json_response(entries[cursor:end], headers=headers)


async def _xet_token(request: web.Request) -> web.StreamResponse:
    request.app[ORIGIN_KEY].stats.requests["xet-token"] += 1
    return web.json_response(
        {
            "error": "this origin advertises Xet hashes but stores no Xet data;"
            " download over HTTP (for huggingface_hub: set HF_HUB_DISABLE_XET=1)"
        },
        status=501,
    )


async def _resolve(request: web.Request) -> web.StreamResponse:
    found = _lookup(request, "resolve")
    if isinstance(found, web.Response):
        return found
    origin, repo, sha = found
    path = request.match_info["path"]
    served = repo.find(path)
    if served is None:
        return _error(404, "EntryNotFound", f"{path} does not exist on revision {sha}")
    base = str(request.url.origin())
    headers = {"X-Repo-Commit": sha, "ETag": f'"{served.etag}"'}
    if served.is_lfs:
        headers["X-Linked-Etag"] = f'"{served.sha256}"'
        headers["X-Linked-Size"] = str(served.size)
        if repo.xet:
            refresh = f"{base}/api/models/{repo.repo_id}/xet-read-token/{sha}"
            headers["X-Xet-Hash"] = served.xet_hash
            headers["X-Xet-Refresh-Route"] = refresh
            headers["Link"] = f'<{refresh}>; rel="xet-auth"'
        if origin.redirect_lfs:
            query = urlencode({"repo": repo.repo_id})
            headers["Location"] = f"{base}/cdn/{quote(served.sha256)}?{query}"
            return web.Response(status=302, headers=headers)
    return await serve_file(request, served, headers, origin._delivery())


async def _cdn(request: web.Request) -> web.StreamResponse:
    """The LFS store a resolve redirects to; like a signed CDN URL it needs no token.

    huggingface_hub follows redirects that stay on the same host and then reads the metadata
    from this answer, so it repeats the commit and linked ETag headers of the resolve.
    """
    origin = request.app[ORIGIN_KEY]
    origin.stats.requests["cdn"] += 1
    sha256 = request.match_info["sha256"]
    wanted_repo = request.query.get("repo")
    candidates = sorted(origin.repos.values(), key=lambda r: r.repo_id != wanted_repo)
    for repo in candidates:
        served = next((f for f in repo.files if f.is_lfs and f.sha256 == sha256), None)
        if served is not None:
            headers = {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"'}
            if repo.repo_id == wanted_repo:
                headers["X-Repo-Commit"] = repo.commit_sha
            return await serve_file(request, served, headers, origin._delivery())
    return _error(404, "EntryNotFound", f"no LFS object {sha256}")


async def _plain_file(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN_KEY]
    origin.stats.requests["file"] += 1
    name = request.match_info["name"]
    served = origin.plain_files.get(name)
    if served is None:
        return _error(404, "EntryNotFound", f"no file named {name!r}")
    headers = {"ETag": f'"{served.sha256}"'}
    return await serve_file(request, served, headers, origin._delivery())
