"""Coordinator settings: frozen, built once by `main` from flags and MODELCACHE_* variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import DEFAULT_NODE_GROUP_LABEL
from modelcache.contract.service_process import parse_listen


@dataclass(frozen=True, slots=True)
class StoreSettings:
    kind: str  # "sqlite" or "kube"
    sqlite_path: Path | None = None
    kubeconfig: Path | None = None
    namespace: str = "modelcache-system"


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    store: StoreSettings
    host: str = "127.0.0.1"
    port: int = 8080
    node_group_label: str = DEFAULT_NODE_GROUP_LABEL
    heartbeat_interval: float = 10.0
    """How often agents are asked to report when nothing changes."""
    heartbeat_timeout: float = 30.0
    """A node whose agent has not reported for this long is NodeNotReady."""
    not_ready_deletion_timeout: float = 600.0
    """A deleted cache stops waiting for a node that has been NotReady this long."""
    status_interval: float = 1.0
    """At most one status write per changed object per this many seconds (coalescing)."""
    status_render_max_age: float = 0.5
    """REST may serve a cache status rendered this many seconds ago while reports stream in
    (it is re-rendered at once when nothing newer changed it)."""
    long_poll_max: float = 60.0
    """Longest wait a long poll of the desired list may ask for."""


def parse_store(text: str, kubeconfig: str | None) -> StoreSettings:
    if text == "kube":
        return StoreSettings("kube", kubeconfig=Path(kubeconfig) if kubeconfig else None)
    if text.startswith("sqlite:") and len(text) > len("sqlite:"):
        return StoreSettings("sqlite", sqlite_path=Path(text.removeprefix("sqlite:")))
    raise UsageError(f"--store {text!r}: use sqlite:PATH (embedded) or kube (Kubernetes API)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelcache-coordinator",
        description="Holds LocalModelCache objects, tells agents what to cache, reports status. "
        "Every flag can also be set as MODELCACHE_<FLAG> (e.g. MODELCACHE_STORE).",
    )
    parser.add_argument(
        "--store", help="sqlite:PATH (default sqlite:.modelcache/coordinator.db) or kube"
    )
    parser.add_argument("--listen", help="HOST:PORT for REST (default 127.0.0.1:8080)")
    parser.add_argument("--kubeconfig", help="kubeconfig for --store kube (default: in-cluster)")
    parser.add_argument(
        "--node-group-label", help=f"node label (default {DEFAULT_NODE_GROUP_LABEL})"
    )
    parser.add_argument("--heartbeat-timeout", type=float, help="seconds (default 30)")
    parser.add_argument("--not-ready-deletion-timeout", type=float, help="seconds (default 600)")
    parser.add_argument("--status-interval", type=float, help="seconds (default 1)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(
    args: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[CoordinatorSettings, bool]:
    """Flags win over MODELCACHE_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    parsed = build_parser().parse_args(args)

    def pick(flag: str) -> str | None:
        value = getattr(parsed, flag)
        if value is not None:
            return str(value)
        return env.get(f"MODELCACHE_{flag.upper()}") or None

    def seconds(flag: str, default: float) -> float:
        value = pick(flag)
        try:
            number = float(value) if value is not None else default
        except ValueError as e:
            raise UsageError(f"--{flag.replace('_', '-')} {value!r} is not a number") from e
        if number <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive")
        return number

    store = parse_store(pick("store") or "sqlite:.modelcache/coordinator.db", pick("kubeconfig"))
    host, port = parse_listen(pick("listen") or "127.0.0.1:8080")
    heartbeat_timeout = seconds("heartbeat_timeout", 30.0)
    settings = CoordinatorSettings(
        store=store,
        host=host,
        port=port,
        node_group_label=pick("node_group_label") or DEFAULT_NODE_GROUP_LABEL,
        heartbeat_interval=max(heartbeat_timeout / 3, 0.1),
        heartbeat_timeout=heartbeat_timeout,
        not_ready_deletion_timeout=seconds("not_ready_deletion_timeout", 600.0),
        status_interval=seconds("status_interval", 1.0),
    )
    return settings, bool(parsed.verbose)
