"""What a dev run starts, where it keeps things, and on which ports: settings and command lines.

Every child is this interpreter running a module (`python -m modelcache.agent.main ...`), so a
dev run uses the code of the checkout it was started from, installed or not.
"""

from __future__ import annotations

import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from modelcache.contract.errors import UsageError
from modelcache.devrun.examples import Examples
from modelcache.devrun.processes import ChildSpec, left_running

LOCALHOST: Final = "127.0.0.1"
AGENTS: Final = (("gpu-a100-0", "a100"), ("gpu-a100-1", "a100"), ("gpu-h100-0", "h100"))
COORDINATOR_PORT: Final = 8080
"""What `modelcache get` and `apply` assume without --coordinator; another port if it is taken."""
RATE_PER_CONNECTION: Final = 6 * 1024 * 1024
"""Bytes/s per origin connection: slow enough to watch, fast enough to be done in seconds."""
TIER_ORIGIN, TIER_COORDINATOR, TIER_AGENT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class DevRunSettings:
    run_dir: Path
    examples: Path
    coordinator_port: int = COORDINATOR_PORT
    """0: any free port."""
    rate_per_connection: int = RATE_PER_CONNECTION
    ready_timeout: float = 120.0
    """Seconds from start until every node holds the model."""
    exit_when_ready: bool = False
    keep_state: bool = False
    """Reuse the last run's coordinator database and agents' caches instead of starting empty."""
    agents: tuple[tuple[str, str], ...] = AGENTS


@dataclass(frozen=True, slots=True)
class RunLayout:
    """Everything a dev run writes, under one folder."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def origin_repos(self) -> Path:
        return self.root / "origin"

    @property
    def origin_url_file(self) -> Path:
        return self.root / "origin.url"

    @property
    def coordinator_db(self) -> Path:
        return self.root / "coordinator.db"

    @property
    def pid_file(self) -> Path:
        return self.root / "pids"

    def origin_repo(self, repo_id: str) -> Path:
        return self.origin_repos / repo_id.replace("/", "--")

    def cache_root(self, node: str) -> Path:
        return self.root / "agents" / node

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def prepare(self, keep_state: bool) -> None:
        """Refuse to share the folder with a live run; start empty unless told to keep state.
        The origin's generated repo is kept either way (blocking)."""
        alive = left_running(self.pid_file)
        if alive:
            raise UsageError(
                f"a dev run in {self.root} is still going: {', '.join(alive)}; stop it (Ctrl-C "
                "in its terminal, or kill those pids) or pass --run-dir"
            )
        if not keep_state:
            shutil.rmtree(self.root / "agents", ignore_errors=True)
            for stale in (self.coordinator_db, self.origin_url_file):
                for path in stale.parent.glob(stale.name + "*"):  # SQLite's -wal and -shm too
                    path.unlink(missing_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.origin_repos.mkdir(parents=True, exist_ok=True)


def pick_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else a free port the kernel picks. A child binds it
    moments later; losing that race shows as the child failing to start, with its log."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOCALHOST, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise UsageError("no free TCP port on 127.0.0.1")


def _module(name: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", name, *args)


def origin_spec(layout: RunLayout, examples: Examples, rate: int) -> ChildSpec:
    argv = _module(
        "modelcache.origin",
        "--generate-demo",
        str(layout.origin_repo(examples.repo_id)),
        "--demo-repo-id",
        examples.repo_id,
        "--demo-size",
        str(examples.cache.model_size),
        "--host",
        LOCALHOST,
        "--port",
        "0",
        "--rate-per-connection",
        str(rate),
        "--ready-file",
        str(layout.origin_url_file),
    )
    return ChildSpec("origin", argv, layout.log("origin"), TIER_ORIGIN)


def coordinator_spec(layout: RunLayout, port: int) -> ChildSpec:
    argv = _module(
        "modelcache.coordinator.main",
        "--store",
        f"sqlite:{layout.coordinator_db}",
        "--listen",
        f"{LOCALHOST}:{port}",
        "-v",
    )
    return ChildSpec("coordinator", argv, layout.log("coordinator"), TIER_COORDINATOR)


def agent_spec(
    layout: RunLayout, node: str, group: str, port: int, coordinator: str, origin: str
) -> ChildSpec:
    argv = _module(
        "modelcache.agent.main",
        "--coordinator",
        coordinator,
        "--node-name",
        node,
        "--node-group",
        group,
        "--cache-root",
        str(layout.cache_root(node)),
        "--listen",
        f"{LOCALHOST}:{port}",
        "-v",
    )
    return ChildSpec(node, argv, layout.log(node), TIER_AGENT, env={"HF_ENDPOINT": origin})
