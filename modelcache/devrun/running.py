"""One dev run from start to Ctrl-C: bring everything up, apply the examples, watch the model
arrive on every node, show where things are, and stop it all in order.

A watcher runs beside the bring-up from the first child on: whichever child exits on its own,
at any moment, ends the run with its name and the end of its log.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import aiohttp

from modelcache.cli.main import build_parser
from modelcache.cli.objects_command import CoordinatorEndpoint, coordinator_client
from modelcache.contract.errors import ModelCacheError
from modelcache.contract.quantities import format_bytes
from modelcache.devrun.examples import Examples, load_examples
from modelcache.devrun.launching import (
    LOCALHOST,
    DevRunSettings,
    RunLayout,
    agent_spec,
    coordinator_spec,
    origin_spec,
    pick_port,
)
from modelcache.devrun.processes import Child, Children, log_excerpt
from modelcache.devrun.watching import DOWNLOADED, ProgressBoard, until_downloaded

PROG = "python -m modelcache.devrun"


class DevRun:
    """The run's state, shared with the signal handler in `__main__` (it reads `ready`)."""

    def __init__(self, settings: DevRunSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.layout = RunLayout(settings.run_dir.resolve())
        self.children = Children(self.layout.pid_file)
        self.out = out
        self.ready = False
        self._deadline = 0.0

    async def run(self) -> int:
        """Until Ctrl-C (cancellation), or until ready with `exit_when_ready`; stops everything
        on the way out. A failure is reported before the stop and gives exit code 1."""
        examples = await asyncio.to_thread(load_examples, self.settings.examples)
        await asyncio.to_thread(self.layout.prepare, self.settings.keep_state)
        self._deadline = time.monotonic() + self.settings.ready_timeout
        flow = asyncio.create_task(self._bring_up(examples), name="devrun-bring-up")
        watch = asyncio.create_task(self.children.first_exit(), name="devrun-watch-children")
        try:
            done, _ = await asyncio.wait({flow, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                watch.result()  # raises: a child exited
            flow.result()
        except (ModelCacheError, OSError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
            return 1
        else:
            return 0
        finally:
            for task in (flow, watch):
                task.cancel()
            await asyncio.gather(flow, watch, return_exceptions=True)
            current = asyncio.current_task()
            interrupted = current is not None and current.cancelling() > 0
            self._say(
                ("\n" if interrupted else "")
                + "stopping: agents, then the coordinator, then the origin"
            )
            notes = await self.children.stop()
            for note in notes:
                self._say(f"  {note}")
            self._say("stopped" + (" (with the problems above)" if notes else ""))

    async def _bring_up(self, examples: Examples) -> None:
        layout, settings = self.layout, self.settings
        self._say(f"dev run in {layout.root} (logs in {layout.logs})")
        coordinator_port = await asyncio.to_thread(pick_port, settings.coordinator_port)
        coordinator_url = f"http://{LOCALHOST}:{coordinator_port}"
        origin = await self.children.start(
            origin_spec(layout, examples, settings.rate_per_connection)
        )
        coordinator = await self.children.start(coordinator_spec(layout, coordinator_port))
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await self._until_ready(origin, _file_exists(layout.origin_url_file))
            origin_url = (await asyncio.to_thread(layout.origin_url_file.read_text)).strip()
            self._say(
                f"origin       {origin_url}  serves hf://{examples.repo_id} "
                f"(synthetic stand-in, {format_bytes(examples.cache.model_size)})"
            )
            await self._until_ready(coordinator, _answers_ok(http, f"{coordinator_url}/readyz"))
            self._say(f"coordinator  {coordinator_url}  (store sqlite:{layout.coordinator_db})")
            agents: dict[str, tuple[Child, str]] = {}
            for node, group in settings.agents:
                port = await asyncio.to_thread(pick_port, 0)
                spec = agent_spec(layout, node, group, port, coordinator_url, origin_url)
                agents[node] = (await self.children.start(spec), f"http://{LOCALHOST}:{port}")
            for node, (child, url) in agents.items():
                await self._until_ready(child, _answers_ok(http, f"{url}/readyz"))
                self._say(f"agent        {url}  {node}, cache {layout.cache_root(node)}")
        files = (arg for path in examples.files for arg in ("-f", str(path)))
        await self._cli("apply", *files, coordinator_url)
        cache = examples.cache
        nodes = [(n, g) for n, g in settings.agents if g in cache.node_groups]
        self._say(f"waiting for {len(nodes)} nodes to report NodeDownloaded for {cache.name}")
        started = time.monotonic()
        await self._until_downloaded(coordinator_url, cache.name, nodes, cache.model_size)
        self._say(f"all {len(nodes)} nodes NodeDownloaded in {time.monotonic() - started:.1f} s")
        await self._cli("get", "caches", coordinator_url)
        await self._cli("get", "nodes", coordinator_url)
        self._show_urls(coordinator_url, origin_url, {n: u for n, (_, u) in agents.items()})
        self.ready = True
        if settings.exit_when_ready:
            return
        self._say("running; Ctrl-C stops everything")
        await asyncio.Event().wait()

    async def _until_ready(self, child: Child, probe: Callable[[], Awaitable[bool]]) -> None:
        await self.children.until_ready(child, probe, self._deadline - time.monotonic())

    async def _until_downloaded(
        self, coordinator_url: str, cache_name: str, nodes: list[tuple[str, str]], size: int
    ) -> None:
        board = ProgressBoard(self.out)
        try:
            async with (
                coordinator_client(CoordinatorEndpoint(coordinator_url, timeout=5.0)) as client,
                asyncio.timeout(max(self._deadline - time.monotonic(), 0.1)),
            ):
                await until_downloaded(client, cache_name, nodes, size, board)
        except TimeoutError as e:
            lagging = [row for row in board.last if row.state != DOWNLOADED] or board.last
            states = "".join(f"  {row.line()}\n" for row in lagging)
            names = {row.node for row in lagging}
            agent = next((c for c in self.children.all if c.name in names), None)
            limit = self.settings.ready_timeout
            what = f"not every node reported {DOWNLOADED} within {limit:.0f} s of the start"
            if agent is None:
                raise ModelCacheError(f"{what}: is {cache_name} admitted? see the logs") from e
            raise ModelCacheError(f"{what}:\n{states}{await log_excerpt(agent)}") from e
        finally:
            board.close()

    async def _cli(self, *args: str) -> None:
        """What a user would type, run in this process: `modelcache ARGS --coordinator URL`."""
        *words, coordinator_url = args
        self._say(f"\n$ modelcache {' '.join(_shown(w) for w in words)}")
        parsed = build_parser().parse_args([*words, "--coordinator", coordinator_url])
        if await parsed.run(parsed) != 0:
            raise ModelCacheError(f"`modelcache {' '.join(words)}` failed (see above)")
        self.out.flush()

    def _show_urls(self, coordinator: str, origin: str, agents: dict[str, str]) -> None:
        lines = [
            "",
            f"REST         {coordinator}/v1/localmodelcaches  (also /v1/localmodelnodes, ...)",
            f"metrics      {coordinator}/metrics  (coordinator)",
            *(f"             {url}/metrics  ({node})" for node, url in agents.items()),
            f"origin       {origin}",
            f"logs         {self.layout.logs}",
            f"try          {_cli_command()} get caches --coordinator {coordinator}",
        ]
        self._say("\n".join(lines))

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _file_exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await asyncio.to_thread(path.is_file)

    return probe


def _answers_ok(http: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            async with http.get(url) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe


def _shown(word: str) -> str:
    """An absolute path under the current folder as the user would type it."""
    path = Path(word)
    if not path.is_absolute():
        return word
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return word


def _cli_command() -> str:
    script = Path(sys.executable).with_name("modelcache")
    return _shown(str(script)) if script.exists() else "modelcache"
